import pytest
import torch

from rlaif.extrapolate import extrapolate


def test_extrapolation_moves_past_the_trained_weights():
    ref = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor([3])}
    trained = {"w": torch.tensor([2.0, 1.0]), "steps": torch.tensor([4])}
    out = extrapolate(ref, trained, alpha=1.5)
    assert torch.allclose(out["w"], torch.tensor([2.5, 0.5]))
    assert out["steps"].item() == 4  # integer buffers are taken as trained
    assert torch.equal(extrapolate(ref, trained, 1.0)["w"], trained["w"])
    assert torch.equal(extrapolate(ref, trained, 0.0)["w"], ref["w"])


def test_bf16_keeps_a_small_update():
    ref = {"w": torch.full((4,), 1.0, dtype=torch.bfloat16)}
    trained = {"w": torch.full((4,), 1.0078125, dtype=torch.bfloat16)}  # one bf16 step above 1
    out = extrapolate(ref, trained, alpha=2.0)["w"]
    assert out.dtype == torch.bfloat16 and out[0].item() == pytest.approx(1.015625)


def test_mismatched_state_dicts_fail():
    with pytest.raises(ValueError, match="differ in tensors"):
        extrapolate({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 1.5)
    with pytest.raises(ValueError, match="shape"):
        extrapolate({"a": torch.zeros(1)}, {"a": torch.zeros(2)}, 1.5)
