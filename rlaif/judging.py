"""Reading a judge's reply: a score 1–5 and an explanation, or an honest parse failure (never a guessed score)."""
from __future__ import annotations

import re
from dataclasses import dataclass

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])(?:\s*(?:/|out of)\s*5)?\b", re.IGNORECASE)
_EXPLANATION = re.compile(r"explanation\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Judgment:
    score: int | None
    explanation: str
    parse_ok: bool


def parse_judgment(text: str | None) -> Judgment:
    """The last `Score: N` (N in 1..5; `**Score:** 4`, `score = 4`, `Score: 4/5` too) wins; anything else fails."""
    if not text or not text.strip():
        return Judgment(None, "", False)
    matches = list(_SCORE.finditer(text))
    if not matches:
        return Judgment(None, text.strip()[:500], False)
    last = matches[-1]
    before = text[: last.start()].strip()
    m = _EXPLANATION.search(before)
    explanation = (m.group(1) if m else before).strip()[:500]
    return Judgment(int(last.group(1)), explanation, True)


def is_correct(score: int | None, threshold: int = 3) -> bool:
    """LLaVA-Hound's accuracy: an answer counts as correct when its score is at least 3."""
    return score is not None and score >= threshold
