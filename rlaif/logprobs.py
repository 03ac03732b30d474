"""Per-token and per-sequence log-probabilities of answer tokens from a causal LM's logits."""
from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) log p(token t | tokens < t) for t = 1..T-1, computed in float32, and the (B, T-1) float mask of the
    answer tokens among them. `answer_mask` (B, T) is 1 on answer tokens (never on the first position, which has no
    prediction), 0 on prompt, video and padding tokens."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked, answer_mask[:, 1:].to(torch.float32)


def sequence_logps(token_lp: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """(B,): sum (or per-token mean) of the masked token log-probs."""
    total = (token_lp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total
