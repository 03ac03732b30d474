"""Questions about a video: reading an LLM's generated question/answer, and the train/eval split by video."""
from __future__ import annotations

import hashlib
import re

_QA = re.compile(r"Question:\s*(.+?)\s*\n\s*Answer:\s*(.+)", re.IGNORECASE)


def qa_regex(max_tokens: int) -> str:
    """The reply shape, bounded so it fits in max_tokens even at one token per character."""
    room = max(8, max_tokens - 8)
    return rf"Question: [^\n]{{3,{room * 2 // 3}}}\nAnswer: [^\n]{{1,{max(1, room // 3)}}}"


def assign_splits(video_ids: list[str], eval_fraction: float, seed: int) -> dict[str, str]:
    """Split by video (eval videos are never trained on): the videos whose seeded hash ranks lowest go to eval,
    round(fraction × n) of them, at least one when the fraction is positive and there are two or more videos."""
    ranked = sorted(set(video_ids), key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    n_eval = round(eval_fraction * len(ranked))
    if eval_fraction > 0 and len(ranked) >= 2:
        n_eval = min(max(n_eval, 1), len(ranked) - 1)
    return {v: "eval" if i < n_eval else "train" for i, v in enumerate(ranked)}


def parse_qa(text: str) -> tuple[str, str] | None:
    m = _QA.search(text or "")
    return (m.group(1).strip(), m.group(2).strip()) if m else None
