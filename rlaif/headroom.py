"""The grounded-headroom gate's figures, and the prior-only baseline, from answers and ground truth (no Ray).

RLAIF raises the greedy answer only towards answers the policy already samples (best-of-K pairs can only prefer
what was sampled), and it helps only when those answers come from the video: so before any round, per question
kind, on labelled dev clips:

- greedy: the share of questions the greedy answer gets right (what the eval measures);
- pass@K: the share where at least one of K sampled answers is right (the ceiling a round can pull towards);
- other-clip pass@K: the same with another clip's frames in view. When it equals pass@K, the right samples come
  from answer priors, not from the video, and a judge that prefers them teaches guessing, not seeing.

The prior-only baseline answers each question with the warm-up's most common answer to the same question text (to
the same kind when the text is new), blind: the floor any "the model looks at the video" claim must clear.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from rlaif.metrics import exact_match, normalise_answer
from rlaif.stats import paired_change


def any_right(answers: dict[str, list[str]], references: dict[str, str]) -> dict[str, bool]:
    """Question id -> whether any of its answers matches its reference exactly."""
    return {q: any(exact_match(a, references[q]) for a in answers.get(q, [])) for q in references}


def gate_figures(kinds: dict[str, str], references: dict[str, str], greedy: dict[str, list[str]],
                 sampled: dict[str, list[str]], other_clip: dict[str, list[str]]) -> dict[str, dict]:
    """Per kind (and "all"): n, greedy, pass_at_k, other_clip_pass_at_k, the grounded share (pass@K minus the
    other-clip pass@K) with McNemar's p of pass@K against other-clip pass@K on the same questions."""
    right_greedy = any_right(greedy, references)
    right_k, right_other = any_right(sampled, references), any_right(other_clip, references)
    out = {}
    for kind in sorted(set(kinds.values())) + ["all"]:
        ids = [q for q in references if kind == "all" or kinds[q] == kind]
        grounded = paired_change({q: right_other[q] for q in ids}, {q: right_k[q] for q in ids})
        out[kind] = {"n": len(ids), "greedy": _share(right_greedy, ids), "pass_at_k": _share(right_k, ids),
                     "other_clip_pass_at_k": _share(right_other, ids), "grounded": grounded["delta"],
                     "grounded_p": grounded["p"]}
    return out


def _share(right: dict[str, bool], ids: list[str]) -> float | None:
    return sum(right[q] for q in ids) / len(ids) if ids else None


def prior_answers(labelled: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """(question text -> most common answer, kind -> most common answer) of labelled rows (question, answer, kind).
    Answers are compared normalised ("Two" and "2" are one answer); ties go to the answer seen first."""
    by_question: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for r in labelled:
        key = " ".join(normalise_answer(r["answer"]))
        by_question[r["question"]][key] += 1
        if r.get("kind"):
            by_kind[r["kind"]][key] += 1
    return ({q: c.most_common(1)[0][0] for q, c in by_question.items()},
            {k: c.most_common(1)[0][0] for k, c in by_kind.items()})


def prior_baseline(questions: list[dict], labelled: list[dict]) -> dict[str, dict]:
    """Per kind (and "all"): n and the exact match of the prior-only answers to `questions` (question, kind,
    reference_answer), the prior coming from `labelled` (the warm-up rows)."""
    per_question, per_kind = prior_answers(labelled)
    hits: dict[str, list[bool]] = defaultdict(list)
    for q in questions:
        guess = per_question.get(q["question"], per_kind.get(q["kind"], ""))
        right = exact_match(guess, q["reference_answer"])
        hits[q["kind"]].append(right)
        hits["all"].append(right)
    return {k: {"n": len(v), "exact_match": sum(v) / len(v)} for k, v in sorted(hits.items())}
