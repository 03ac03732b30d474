"""Per-round eval figures from judged answers (LLaVA-Hound's: accuracy = share scored ≥ 3, mean score), plus the
judge's parse-failure rate, mean answer length, and, where reference answers exist, how often the answer states it."""
from __future__ import annotations

import re

from rlaif.judging import PARSE_FAILED, is_correct


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def states_reference(answer: str, reference: str) -> bool:
    """The reference answer's words appear, in order and adjacent, in the answer ("2" in "there are 2 circles")."""
    ref, ans = _words(reference), _words(answer)
    return bool(ref) and any(ans[i: i + len(ref)] == ref for i in range(len(ans) - len(ref) + 1))


def eval_metrics(rows: list[dict]) -> dict:
    """`rows`: judged answers with score, status, n_tokens and (optionally) reference_answer, response. Accuracy and
    mean score are over the scored answers (an empty answer is scored 1 by rule); answers without a score (parse
    failures, refusals) are counted in unscored_rate, never guessed."""
    n = len(rows)
    scored = [r for r in rows if r["score"] is not None]
    with_ref = [r for r in rows if r.get("reference_answer")]
    return {
        "answers": n,
        "accuracy": sum(is_correct(r["score"]) for r in scored) / len(scored) if scored else None,
        "mean_score": sum(r["score"] for r in scored) / len(scored) if scored else None,
        "parse_failure_rate": sum(r.get("status") == PARSE_FAILED for r in rows) / n if n else None,
        "unscored_rate": (n - len(scored)) / n if n else None,
        "mean_tokens": sum(r["n_tokens"] for r in rows) / n if n else None,
        "reference_match": (sum(states_reference(r["response"], r["reference_answer"]) for r in with_ref) / len(with_ref)
                            if with_ref else None),
    }
