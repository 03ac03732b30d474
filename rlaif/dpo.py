"""DPO losses over per-sequence log-probabilities (the same formulas as TRL's DPOTrainer).

With Δ = [log πθ(y_w|x) − log π_ref(y_w|x)] − [log πθ(y_l|x) − log π_ref(y_l|x)]:
- sigmoid (DPO, Rafailov et al. 2023; conservative DPO with label smoothing ε):
      −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)
- robust (rDPO, Chowdhury et al. 2024): (−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)
- ipo (IPO, Azar et al. 2023), on length-normalised log-probs: (Δ − 1/(2β))²
An SFT term γ·NLL (`sft_nll`, TRL's "sft" loss: the mean over all target tokens of the batch) can be added on the
chosen answer (RPO) or on a ground-truth caption (video-SALMONN 2, γ = 0.1); rlaif.objectives combines them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "robust", "ipo")


@dataclass
class DPOOutput:
    loss: torch.Tensor  # scalar: mean over the batch
    losses: torch.Tensor  # per pair
    chosen_rewards: torch.Tensor  # β·(log πθ − log π_ref) on y_w, detached
    rejected_rewards: torch.Tensor

    @property
    def margin(self) -> torch.Tensor:
        return (self.chosen_rewards - self.rejected_rewards).mean()

    @property
    def accuracy(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float().mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> DPOOutput:
    """All log-prob inputs are (B,) sums over answer tokens (for `ipo`, pass per-token means instead)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError("label_smoothing must be in [0, 0.5)")
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  + F.logsigmoid(-beta * logits) * label_smoothing) / (1 - 2 * label_smoothing)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return DPOOutput(losses.mean(), losses, chosen_rewards, rejected_rewards)


def sft_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every masked token of the batch (not a mean of per-sequence means, so a
    long target weighs by its length, as in TRL's "sft" loss). `token_logps` and `mask` are (B, T)."""
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)
