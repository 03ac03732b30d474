"""The judge audit's pure parts (no Ray): labelled candidate answers, and how a judge's scores rank them.

For each question, the right answer and some wrong answers of the same kind (another colour, shape, motion, count)
are scored by the judge against the clip's caption. A judge is useful for preference pairs to the extent that it
scores the right answer above a wrong one: the audit reports that rate per kind (ties count a half, as a coin
would break them), the ties alone, the threshold view LLaVA-Hound uses (right scored >= 3, wrong < 3), and the
score distributions.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict

from rlaif.judging import is_correct
from rlaif.testkit.synthetic_videos import BACKGROUND_COLOURS, MOTIONS, OBJECT_COLOURS, SHAPES

# The answers each kind can have: wrong candidates are drawn from the same set, so the judge must read the caption.
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "background": tuple(dict.fromkeys(BACKGROUND_COLOURS + OBJECT_COLOURS)),
    "colour": OBJECT_COLOURS,
    "shape": SHAPES,
    "motion": MOTIONS,
    "count": ("0", "1", "2", "3", "4"),
}


def wrong_answers(kind: str, answer: str, n: int, rng: random.Random) -> list[str]:
    """`n` (or as many as there are) wrong answers of `kind`, drawn without replacement."""
    pool = [a for a in ANSWER_SETS[kind] if a != answer]
    return rng.sample(pool, min(n, len(pool)))


def ranking_figures(rows: list[dict]) -> dict[str, dict]:
    """Per kind (and "all"), from judged candidates (question_id, kind, right, score): questions, candidates,
    rank_accuracy (P[score right > score wrong], ties 1/2), ties, right_ge3, wrong_lt3, unscored, and the score
    histograms of right and wrong answers (rounded scores 1..5)."""
    by_question: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_question[r["question_id"]].append(r)
    out = {}
    kinds = sorted({r["kind"] for r in rows})
    for kind in kinds + ["all"]:
        questions = [q for q, rs in by_question.items() if kind == "all" or rs[0]["kind"] == kind]
        cands = [r for q in questions for r in by_question[q]]
        scored = [r for r in cands if r["score"] is not None]
        compared, wins, ties = 0, 0.0, 0
        for q in questions:
            rights = [r["score"] for r in by_question[q] if r["right"] and r["score"] is not None]
            wrongs = [r["score"] for r in by_question[q] if not r["right"] and r["score"] is not None]
            for a in rights:
                for b in wrongs:
                    compared += 1
                    wins += 1.0 if a > b else 0.5 if a == b else 0.0
                    ties += a == b
        right = [r["score"] for r in scored if r["right"]]
        wrong = [r["score"] for r in scored if not r["right"]]
        out[kind] = {
            "questions": len(questions), "candidates": len(cands), "unscored": len(cands) - len(scored),
            "rank_accuracy": wins / compared if compared else None, "ties": ties / compared if compared else None,
            "right_ge3": sum(map(is_correct, right)) / len(right) if right else None,
            "wrong_lt3": sum(not is_correct(s) for s in wrong) / len(wrong) if wrong else None,
            "mean_right": sum(right) / len(right) if right else None,
            "mean_wrong": sum(wrong) / len(wrong) if wrong else None,
            "hist_right": _histogram(right), "hist_wrong": _histogram(wrong)}
    return out


def _histogram(scores: list[float]) -> dict[str, int]:
    counts = Counter(min(5, max(1, int(round(s)))) for s in scores)
    return {str(s): counts.get(s, 0) for s in range(1, 6)}
