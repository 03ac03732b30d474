"""Reading a judge's reply, or an honest parse failure (never a guessed score).

Two reply shapes: LLaVA-Hound's `Score: N` (N in 1..5) after a short explanation, and VLM-RLAIF's aspect ratings
(accurate, helpful, natural, concise: each 1..5; the score is their mean). A length penalty against verbosity
(VLM-RLAIF, i-SRT) can then be taken off any score.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# What happened to each answer at the judge (the `status` column of judgments). Only "scored" carries the judge's
# score; an empty answer gets the lowest score by rule (the judge is not asked); the others have no score.
SCORED = "scored"
PARSE_FAILED = "parse_failed"
EMPTY_ANSWER = "empty_answer"
ANSWER_REFUSED = "answer_refused"  # the answering engine refused the prompt (over its context length): no answer
JUDGE_REFUSED = "judge_refused"  # the judge engine refused the judging prompt: no verdict
ENGINE_CRASHED = "engine_crashed"  # the prompt killed the answering engine every time it was sent: no answer
JUDGE_CRASHED = "judge_crashed"  # the judging prompt killed the judge engine every time it was sent: no verdict
EMPTY_ANSWER_SCORE = 1.0

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])(?:\s*(?:/|out of)\s*5)?\b", re.IGNORECASE)
_EXPLANATION = re.compile(r"explanation\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
ASPECTS = ("accurate", "helpful", "natural", "concise")
_ASPECT = {a: re.compile(rf"{a}\s*[:=]\s*\**\s*([1-5])\b", re.IGNORECASE) for a in ASPECTS}


@dataclass(frozen=True)
class Judgment:
    score: float | None
    explanation: str
    parse_ok: bool
    aspects: dict[str, int] | None = None


def _explanation(before: str) -> str:
    m = _EXPLANATION.search(before)
    return (m.group(1) if m else before).strip()[:500]


def parse_judgment(text: str | None) -> Judgment:
    """The last `Score: N` (N in 1..5; `**Score:** 4`, `score = 4`, `Score: 4/5` too) wins; anything else fails."""
    if not text or not text.strip():
        return Judgment(None, "", False)
    matches = list(_SCORE.finditer(text))
    if not matches:
        return Judgment(None, text.strip()[:500], False)
    last = matches[-1]
    return Judgment(int(last.group(1)), _explanation(text[: last.start()]), True)


def parse_aspects(text: str | None) -> Judgment:
    """Every aspect must be rated (the last rating of each wins); the score is their mean. A missing one fails."""
    if not text or not text.strip():
        return Judgment(None, "", False)
    found = {a: list(p.finditer(text)) for a, p in _ASPECT.items()}
    if not all(found.values()):
        return Judgment(None, text.strip()[:500], False)
    ratings = {a: int(m[-1].group(1)) for a, m in found.items()}
    first = min(m[0].start() for m in found.values())
    return Judgment(sum(ratings.values()) / len(ratings), _explanation(text[:first]), True, ratings)


def length_penalised(score: float, n_tokens: int, penalty: float, budget: int) -> float:
    """`score` minus `penalty` points per token beyond `budget`, never below 1 (the bottom of the scale)."""
    return max(1.0, score - penalty * max(0, n_tokens - budget))


def is_correct(score: float | None, threshold: float = 3) -> bool:
    """LLaVA-Hound's accuracy: an answer counts as correct when its score is at least 3."""
    return score is not None and score >= threshold


def unjudgeable(response: str, finish_reason: str | None) -> str | None:
    """Why an answer is not sent to the judge (ENGINE_CRASHED, ANSWER_REFUSED, EMPTY_ANSWER), or None when it is."""
    from rlaif.schemas import ENGINE_CRASHED as CRASHED_FINISH, REFUSED_FINISH

    if finish_reason == CRASHED_FINISH:
        return ENGINE_CRASHED
    if finish_reason in REFUSED_FINISH:
        return ANSWER_REFUSED
    if not (response or "").strip():
        return EMPTY_ANSWER
    return None
