import math

import numpy as np
import pytest
import torch

from rlaif.dpo import dpo_loss, sft_nll
from rlaif.logprobs import logits_needed, sequence_logps, token_logps
from actors.weight_sync import pack_buckets, unpack_bucket


def test_sigmoid_dpo_matches_the_formula():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-2.0, -5.0, -3.0, -4.0))
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    delta = (-2 + 5) - (-3 + 4)  # 2
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * delta))))
    assert out.chosen_rewards.item() == pytest.approx(0.5) and out.rejected_rewards.item() == pytest.approx(-0.5)
    assert out.accuracy.item() == 1.0 and out.margin.item() == pytest.approx(1.0)


def test_equal_policy_and_reference_gives_log2():
    x = torch.tensor([-3.0, -1.0])
    assert dpo_loss(x, x - 1, x, x - 1).loss.item() == pytest.approx(math.log(2))


def test_label_smoothing_and_variants():
    args = [torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5])]
    plain = dpo_loss(*args, beta=1.0).loss
    smooth = dpo_loss(*args, beta=1.0, label_smoothing=0.1).loss
    assert smooth > plain
    robust = dpo_loss(*args, beta=1.0, label_smoothing=0.1, loss_type="robust").loss
    assert robust.item() == pytest.approx((0.9 * -math.log(torch.sigmoid(torch.tensor(1.0)).item())
                                           + 0.1 * math.log(torch.sigmoid(torch.tensor(-1.0)).item())) / 0.8)
    ipo = dpo_loss(*args, beta=0.5, loss_type="ipo").loss
    assert ipo.item() == pytest.approx((1.0 - 1.0) ** 2)
    with pytest.raises(ValueError):
        dpo_loss(*args, loss_type="kto")


def test_sequence_logps_counts_only_answer_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    lp = torch.log_softmax(logits, -1)
    want0 = lp[0, 1, ids[0, 2]] + lp[0, 2, ids[0, 3]]
    want1 = lp[1, 2, ids[1, 3]] + lp[1, 3, ids[1, 4]]
    token_lp, answer = token_logps(logits, ids, mask)
    got = sequence_logps(token_lp, answer)
    assert torch.allclose(got, torch.stack([want0, want1]))
    assert torch.allclose(sequence_logps(token_lp, answer, average=True), got / 2)


def test_sft_nll_is_the_mean_over_all_target_tokens():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-4.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert sft_nll(lp, mask).item() == pytest.approx((1 + 2 + 4) / 3)  # not the mean of (1.5, 4)


def test_buckets_round_trip_exactly_and_respect_the_size():
    torch.manual_seed(0)
    named = [("a", torch.randn(10, 10)), ("b", torch.randn(300)), ("c", torch.arange(7)), ("d", torch.randn(2, 3, 4))]
    buckets = pack_buckets(named, bucket_bytes=1000)
    assert len(buckets) > 1 and all(b.data.dtype == np.uint8 and (b.nbytes <= 1000 or len(b.slots) == 1) for b in buckets)
    for b in buckets:  # as the object store hands them out: read-only shared memory
        b.data.setflags(write=False)
    back = dict(kv for b in buckets for kv in unpack_bucket(b))
    assert list(back) == ["a", "b", "c", "d"]
    for name, t in named:
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)


def test_buckets_cast_floats_only():
    buckets = pack_buckets([("w", torch.randn(4)), ("i", torch.arange(3))], dtype=torch.bfloat16)
    back = dict(unpack_bucket(buckets[0]))
    assert back["w"].dtype == torch.bfloat16 and back["i"].dtype == torch.int64


def test_logits_of_the_last_positions_give_the_same_answer_logps():
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 7)
    ids = torch.randint(0, 7, (2, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]])
    keep = logits_needed(mask)
    assert keep == 4  # positions 2..5: position 2 predicts the earliest answer token, at 3
    full = sequence_logps(*token_logps(logits, ids, mask))
    kept = sequence_logps(*token_logps(logits[:, -keep:], ids, mask))
    assert torch.equal(kept, full)
    assert logits_needed(torch.zeros(2, 6, dtype=torch.long)) == 6
