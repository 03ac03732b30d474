"""Shared-prefix packing (train.shared_prefix) scores the same pairs as the unpacked batch: per-sequence log-probs
to 1e-5, the DPO loss (sigmoid, ipo, sigmoid + RPO's NLL) and every weight's gradient to 1e-4, on a tiny random
Llama and the tiny Qwen2 text model (tiny-judge), in fp32, with prompts and answers of different lengths (so the
unpacked batch has padding and the packed row has pairs of different sizes)."""
import pytest
import torch

from rlaif.config import TrainConfig
from rlaif.objectives import preference_loss
from rlaif.policy_model import answer_logps, answer_token_logps, load_policy, pair_batch
from rlaif.testkit.tiny_models import ensure_model

ROWS = [{"question": q, "chosen": c, "rejected": r, "ref_logp_chosen": -30.0 - i, "ref_logp_rejected": -35.0 + i}
        for i, (q, c, r) in enumerate([
            ("What colour is the circle?", "The circle is red and it moves slowly to the left.", "blue"),
            ("How many squares are in the video? Count them.", "two", "There are three small squares."),
            ("Describe the video.", "A ball moves up.", "A star turns dark then stops in the corner."),
        ])]


@pytest.fixture(scope="module")
def tokenizer():
    return load_policy(ensure_model("tiny-judge"))[1]


def llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).float().eval()


def qwen2(_tokenizer):
    torch.manual_seed(0)
    return load_policy(ensure_model("tiny-judge"))[0].eval()


MODELS = {"llama": llama, "qwen2": qwen2}


def test_packed_row_layout(tokenizer):
    """The mask lets a rejected token see its prompt and itself, never the chosen answer or another pair; each
    answer restarts at the position after its prompt; each answer's first token is predicted by the prompt's last."""
    unpacked = pair_batch(tokenizer, ROWS[:2], False)
    packed = pair_batch(tokenizer, ROWS[:2], False, shared_prefix=True)
    ids, pos, allowed = packed["input_ids"][0], packed["position_ids"][0], packed["allowed"][0, 0]
    answers = unpacked["answer_mask"].sum(1).tolist()  # chosen 0, chosen 1, rejected 0, rejected 1
    prompts = [int(m.nonzero()[0]) for m in unpacked["answer_mask"][:2]]
    assert len(ids) == sum(prompts) + sum(answers)  # each prompt once, no padding
    prompt, chosen, rejected = prompts[0], answers[0], answers[2]
    c0, r0 = prompt, prompt + chosen  # where pair 0's answers start in the row
    assert torch.equal(ids[:r0], unpacked["input_ids"][0, :r0])
    assert torch.equal(ids[r0:r0 + rejected], unpacked["input_ids"][2, prompt:prompt + rejected])
    assert pos[r0] == pos[c0] == prompt and pos[r0 + rejected] == 0  # pair 1's prompt starts again at 0
    assert allowed[r0, :prompt].all() and not allowed[r0, c0:r0].any() and allowed[r0, r0]
    assert not allowed[r0 + 1, r0 + 2] and not allowed[r0 + rejected, :r0 + rejected].any()
    first = packed["sequence"] == 2  # pair 0's rejected answer: its first token is predicted from the prompt
    assert packed["sources"][first][0] == prompt - 1 and packed["sources"][first][1] == r0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_logps(tokenizer, name):
    model = MODELS[name](tokenizer)
    with torch.no_grad():
        total, mean = answer_logps(model, pair_batch(tokenizer, ROWS, False))
        packed_total, packed_mean = answer_logps(model, pair_batch(tokenizer, ROWS, False, shared_prefix=True))
        lp, mask = answer_token_logps(model, pair_batch(tokenizer, ROWS, False, shared_prefix=True))
    assert mask.sum(1).tolist() == [float(len(tokenizer(r[k] + "<|im_end|>", add_special_tokens=False)["input_ids"]))
                                    for k in ("chosen", "rejected") for r in ROWS]
    assert total.abs().min() > 1  # real log-probs, not zeros
    torch.testing.assert_close(packed_total, total, rtol=1e-6, atol=1e-5)  # sums of ~-100: fp32 rounding
    torch.testing.assert_close(packed_mean, mean, rtol=0, atol=1e-5)
    print(f"{name}: max |diff| sum {float((packed_total - total).abs().max()):.1e}, "
          f"mean {float((packed_mean - mean).abs().max()):.1e}")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("case", [{"loss_type": "sigmoid"}, {"loss_type": "ipo"},
                                  {"loss_type": "sigmoid", "sft_weight": 0.5}], ids=["sigmoid", "ipo", "sigmoid+sft"])
def test_same_loss_and_grads(tokenizer, name, case):
    model = MODELS[name](tokenizer)
    results = []
    for shared in (False, True):
        model.zero_grad()
        loss, metrics = preference_loss(model, tokenizer, ROWS, TrainConfig(shared_prefix=shared, **case), video=False)
        loss.backward()
        results.append((loss.item(), metrics, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, metrics, grads), (p_loss, p_metrics, p_grads) = results
    assert p_loss == pytest.approx(loss, abs=1e-4)
    assert p_metrics.keys() == metrics.keys()
    for k in metrics:
        assert p_metrics[k] == pytest.approx(metrics[k], abs=1e-4), k
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # gradients that could differ
    worst = max(float((p_grads[n] - g).abs().max()) for n, g in grads.items())
    assert worst < 1e-4, worst
    print(f"{name} {case}: |loss diff| {abs(p_loss - loss):.1e}, max |grad diff| {worst:.1e}")


def test_video_model_keeps_the_unpacked_batch():
    with pytest.raises(ValueError, match="text models"):
        pair_batch(None, ROWS, True, shared_prefix=True)
