"""Per-round eval figures from judged answers (LLaVA-Hound's: accuracy = share scored ≥ 3, mean score), plus the
judge's parse-failure rate, mean answer length, and, where reference (ground-truth) answers exist: how often the
answer states the reference, how often it is exactly the reference, and how often the judge agrees with the ground
truth (scored ≥ 3 exactly when the answer states the reference). References only measure; they never judge."""
from __future__ import annotations

import re

from rlaif.judging import PARSE_FAILED, is_correct


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_FILLER = {"a", "an", "the", "it", "is", "are", "there", "they"}


def normalise_answer(text: str) -> list[str]:
    """Lower-case words, number words as digits, articles and filler dropped: "There are two." -> ["2"]."""
    return [_NUMBER_WORDS.get(w, w) for w in _words(text) if w not in _FILLER]


def exact_match(answer: str, reference: str) -> bool:
    ref = normalise_answer(reference)
    return bool(ref) and normalise_answer(answer) == ref


def states_reference(answer: str, reference: str) -> bool:
    """The reference answer's words appear, in order and adjacent, in the answer ("2" in "there are 2 circles"),
    compared as `exact_match` compares them (number words as digits, articles dropped), so an exact match always
    states the reference."""
    ref, ans = normalise_answer(reference), normalise_answer(answer)
    return bool(ref) and any(ans[i: i + len(ref)] == ref for i in range(len(ans) - len(ref) + 1))


def eval_sums(rows: list[dict]) -> dict[str, float]:
    """The counts and sums eval_metrics is made of, for some of the answers: the sums of several parts add up to the
    whole's (so the answers can be counted batch by batch where they are, and only these numbers gathered)."""
    scored = [r for r in rows if r["score"] is not None]
    with_ref = [r for r in rows if r.get("reference_answer")]
    judged_with_ref = [r for r in with_ref if r["score"] is not None]
    return {
        "answers": len(rows),
        "scored": len(scored),
        "correct": sum(is_correct(r["score"]) for r in scored),
        "score_sum": sum(r["score"] for r in scored),
        "parse_failed": sum(r.get("status") == PARSE_FAILED for r in rows),
        "tokens": sum(r["n_tokens"] for r in rows),
        "with_ref": len(with_ref),
        "states_ref": sum(states_reference(r["response"], r["reference_answer"]) for r in with_ref),
        "exact": sum(exact_match(r["response"], r["reference_answer"]) for r in with_ref),
        "judged_with_ref": len(judged_with_ref),
        "agree": sum(is_correct(r["score"]) == states_reference(r["response"], r["reference_answer"])
                     for r in judged_with_ref),
    }


def metrics_from_sums(s: dict[str, float]) -> dict:
    """eval_metrics from eval_sums (of all the answers, or added up over parts of them)."""
    def share(part: str, whole: str):
        return s[part] / s[whole] if s[whole] else None

    n = s["answers"]
    return {
        "answers": n,
        "accuracy": share("correct", "scored"),
        "mean_score": share("score_sum", "scored"),
        "parse_failure_rate": share("parse_failed", "answers"),
        "unscored_rate": (n - s["scored"]) / n if n else None,
        "mean_tokens": share("tokens", "answers"),
        "reference_match": share("states_ref", "with_ref"),
        "exact_match": share("exact", "with_ref"),
        "judge_agreement": share("agree", "judged_with_ref"),
    }


def eval_metrics(rows: list[dict]) -> dict:
    """`rows`: judged answers with score, status, n_tokens and (optionally) reference_answer, response. Accuracy and
    mean score are over the scored answers (an empty answer is scored 1 by rule); answers without a score (parse
    failures, refusals) are counted in unscored_rate, never guessed."""
    return metrics_from_sums(eval_sums(rows))
