"""Per-token and per-sequence log-probabilities of answer tokens from a causal LM's logits."""
from __future__ import annotations

import torch


def logits_needed(answer_mask: torch.Tensor) -> int:
    """How many of the last positions' logits the answer tokens need (a forward's `logits_to_keep`): from the position
    before the batch's earliest answer token on, since the logits at position t predict token t+1. Prompts (video
    tokens, question) are most of a sequence; their logits over the whole vocabulary would be most of a forward's
    memory and of the output layer's work."""
    answer_columns = answer_mask.any(0).nonzero()
    t = answer_mask.shape[1]
    return t - int(answer_columns[0]) + 1 if len(answer_columns) else t


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K-1) log p(token t | tokens < t), computed in float32, and the (B, K-1) float mask of the answer tokens
    among them, for the last K-1 tokens of the T: `logits` (B, K, V) are those of the last K positions (K = T: every
    position; fewer after a forward with logits_to_keep=K, see logits_needed). `answer_mask` (B, T) is 1 on answer
    tokens (never on the first position, which has no prediction), 0 on prompt, video and padding tokens."""
    k = logits.shape[1]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = torch.gather(logp, 2, input_ids[:, -k + 1:].unsqueeze(-1)).squeeze(-1)
    return picked, answer_mask[:, -k + 1:].to(torch.float32)


def sequence_logps(token_lp: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """(B,): sum (or per-token mean) of the masked token log-probs."""
    total = (token_lp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total
