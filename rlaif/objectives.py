"""The training objectives of one batch, shared by the Ray Train workers and the TRL agreement test.

- `preference_loss`: DPO-family loss on (chosen, rejected) pairs whose reference log-probs were computed before the
  round (so no reference model is held), plus the optional SFT terms: γ·NLL of the chosen answers (RPO) and
  γ_c·NLL of each video's ground-truth caption (video-SALMONN 2).
- `sft_loss`: plain NLL of targets (rebirth tuning trains the starting model on the final policy's outputs).
"""
from __future__ import annotations

import torch

from rlaif.config import TrainConfig
from rlaif.dpo import dpo_loss, sft_nll
from rlaif.logprobs import sequence_logps
from rlaif.policy_model import answer_token_logps, pair_batch, target_batch
from rlaif.prompts import CAPTION_REQUEST

# Rows of the caption term: the video's frames, the caption request, and its ground-truth caption.
CAPTION_PROMPT_KEY = "caption_request"
GT_CAPTION_KEY = "gt_caption"


def preference_loss(model, processor, rows: list[dict], t: TrainConfig, video: bool) -> tuple[torch.Tensor, dict]:
    """`rows`: question, chosen, rejected, ref_logp_chosen, ref_logp_rejected (+ frames when `video`, + gt_caption
    for the caption term). Returns the loss to backpropagate and detached figures to log."""
    n = len(rows)
    # Shared-prefix packing (t.shared_prefix) computes each prompt once; video models take the unpacked batch.
    batch = pair_batch(processor, rows, video, shared_prefix=t.shared_prefix and not video)
    token_lp, mask = answer_token_logps(model, batch)
    policy = sequence_logps(token_lp, mask, average=t.loss_type == "ipo")
    ref_c = torch.tensor([r["ref_logp_chosen"] for r in rows], dtype=policy.dtype)
    ref_r = torch.tensor([r["ref_logp_rejected"] for r in rows], dtype=policy.dtype)
    out = dpo_loss(policy[:n], policy[n:], ref_c, ref_r, beta=t.beta, loss_type=t.loss_type,
                   label_smoothing=t.label_smoothing)
    loss = out.loss
    metrics = {"dpo_loss": out.loss.item(), "reward_margin": out.margin.item(), "reward_accuracy": out.accuracy.item()}
    if t.sft_weight:
        nll = sft_nll(token_lp[:n], mask[:n])
        loss = loss + t.sft_weight * nll
        metrics["chosen_nll"] = nll.item()
    if t.caption_sft_weight:
        nll = caption_nll(model, processor, rows, video)
        if nll is not None:
            loss = loss + t.caption_sft_weight * nll
            metrics["caption_nll"] = nll.item()
    metrics["loss"] = loss.item()
    return loss, metrics


def caption_nll(model, processor, rows: list[dict], video: bool) -> torch.Tensor | None:
    """NLL of the ground-truth captions of the rows that have one (None when none has)."""
    with_caption = [{**r, CAPTION_PROMPT_KEY: CAPTION_REQUEST} for r in rows if r.get(GT_CAPTION_KEY)]
    if not with_caption:
        return None
    token_lp, mask = answer_token_logps(model, target_batch(processor, with_caption, video, CAPTION_PROMPT_KEY,
                                                            GT_CAPTION_KEY))
    return sft_nll(token_lp, mask)


def sft_loss(model, processor, rows: list[dict], video: bool) -> tuple[torch.Tensor, dict]:
    """`rows`: prompt, target (+ frames when `video`)."""
    token_lp, mask = answer_token_logps(model, target_batch(processor, rows, video, "prompt", "target"))
    loss = sft_nll(token_lp, mask)
    return loss, {"loss": loss.item(), "sft_nll": loss.item()}
