"""rlaif's DPO objectives agree with TRL's DPOTrainer on the same tiny model, pairs and settings (to 1e-4).

TRL computes the reference log-probs with a second model inside its loss; rlaif computes them once per round and
stores them with the pairs, so here they come from the same reference model through rlaif.policy_model.
TRL 1.16's sigmoid loss has no label smoothing; conservative DPO (sigmoid + ε) is checked against its formula in
test_dpo_math.py, and the robust loss (which does take ε in TRL) here.
"""
import tempfile

import pytest
import torch

import datasets
from trl import DPOConfig, DPOTrainer

from rlaif.config import TrainConfig
from rlaif.objectives import preference_loss
from rlaif.policy_model import answer_logps, load_policy, pair_batch
from rlaif.testkit.tiny_models import ensure_model

ROWS = [{"question": f"What colour is shape {i}?",
         "chosen": ["red", "The circle is blue.", "two"][i % 3],
         "rejected": ["square square", "no", "It moves left and right"][i % 3]} for i in range(6)]

CASES = {  # name: (rlaif TrainConfig fields, TRL DPOConfig fields)
    "sigmoid": ({"loss_type": "sigmoid"}, {"loss_type": ["sigmoid"]}),
    "ipo": ({"loss_type": "ipo"}, {"loss_type": ["ipo"]}),
    "robust": ({"loss_type": "robust", "label_smoothing": 0.1}, {"loss_type": ["robust"], "label_smoothing": 0.1}),
    "sigmoid+sft": ({"loss_type": "sigmoid", "sft_weight": 0.5},
                    {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}),
}


@pytest.fixture(scope="module")
def models():
    path = ensure_model("tiny-judge")
    reference, tokenizer = load_policy(path)
    policy, _ = load_policy(path)
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that differs from its reference, so the loss is not log 2
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference, tokenizer


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_trl_dpo_trainer(models, case):
    policy, reference, tokenizer = models
    ours_cfg, trl_cfg = CASES[case]
    t = TrainConfig(beta=0.1, **ours_cfg)

    def prompt(q):
        return tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)

    # TRL's non-conversational form: the chat-templated prompt as text; it appends the EOS token (<|im_end|>) to
    # each answer, as rlaif.vlm_inputs does.
    data = datasets.Dataset.from_list([{"prompt": prompt(r["question"]), "chosen": r["chosen"],
                                        "rejected": r["rejected"]} for r in ROWS])
    args = DPOConfig(output_dir=tempfile.mkdtemp(), beta=0.1, per_device_train_batch_size=len(ROWS), bf16=False,
                     gradient_checkpointing=False, report_to=[], use_cpu=True, max_length=None, **trl_cfg)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader()))))

        total, mean = answer_logps(reference, pair_batch(tokenizer, ROWS, False))
        ref = mean if t.loss_type == "ipo" else total
        n = len(ROWS)
        rows = [{**r, "ref_logp_chosen": float(ref[i]), "ref_logp_rejected": float(ref[n + i])}
                for i, r in enumerate(ROWS)]
        ours, metrics = preference_loss(policy, tokenizer, rows, t, video=False)

    assert abs(trl_loss - 0.6931) > 1e-3  # the policy really differs from the reference
    assert float(ours) == pytest.approx(trl_loss, abs=1e-4), (case, float(ours), trl_loss)
    print(f"{case}: rlaif {float(ours):.8f}  TRL {trl_loss:.8f}  |diff| {abs(float(ours) - trl_loss):.2e}")
