"""Per-sequence log-probabilities of answer tokens from a causal LM's logits."""
from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1): log p(token t | tokens < t) for t = 1..T-1. Computed in float32 for stability."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor,
                   average: bool = False) -> torch.Tensor:
    """(B,): sum (or mean) of answer-token log-probs. `answer_mask` (B, T) is 1 on answer tokens (never on the
    first position, which has no prediction), 0 on prompt, video and padding tokens."""
    mask = answer_mask[:, 1:].to(torch.float32)
    lp = token_logps(logits, input_ids) * mask
    total = lp.sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total
