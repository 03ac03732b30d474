"""Per-round eval figures from judged answers (LLaVA-Hound's: accuracy = share scored ≥ 3, mean score), plus the
judge's parse-failure rate, mean answer length, and, where reference answers exist, how often the answer states it."""
from __future__ import annotations

import re

from rlaif.judging import is_correct


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def states_reference(answer: str, reference: str) -> bool:
    """The reference answer's words appear, in order and adjacent, in the answer ("2" in "there are 2 circles")."""
    ref, ans = _words(reference), _words(answer)
    return bool(ref) and any(ans[i: i + len(ref)] == ref for i in range(len(ans) - len(ref) + 1))


def eval_metrics(rows: list[dict]) -> dict:
    """`rows`: judged answers with score, parse_ok, n_tokens and (optionally) reference_answer, response."""
    n = len(rows)
    parsed = [r for r in rows if r["parse_ok"]]
    with_ref = [r for r in rows if r.get("reference_answer")]
    return {
        "answers": n,
        "accuracy": sum(is_correct(r["score"]) for r in parsed) / len(parsed) if parsed else None,
        "mean_score": sum(r["score"] for r in parsed) / len(parsed) if parsed else None,
        "parse_failure_rate": (n - len(parsed)) / n if n else None,
        "mean_tokens": sum(r["n_tokens"] for r in rows) / n if n else None,
        "reference_match": (sum(states_reference(r["response"], r["reference_answer"]) for r in with_ref) / len(with_ref)
                            if with_ref else None),
    }
