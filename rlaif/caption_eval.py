"""video-SALMONN 2's caption evaluation, as pure functions.

A reference caption is split into atomic facts (its sentences: the synthetic clips' ground-truth captions state one
fact per sentence). A judge marks each fact as covered, missing or contradicted by the model's caption
(pipelines.stages.caption_eval asks it); the missing rate and the contradiction (hallucination) rate are the shares of facts
so marked. The repetition rate needs no judge: the share of word 3-grams of a caption that repeat an earlier one,
the degenerate looping that DPO on long outputs is known to cause.
"""
from __future__ import annotations

import re

from rlaif.prompts import FACT_VERDICTS

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_VERDICT = re.compile(r"verdict\s*:\s*\**\s*(covered|missing|contradicted)\b", re.IGNORECASE)


def reference_facts(caption: str) -> list[str]:
    """The sentences of a reference caption, stripped, without empty ones."""
    return [s.strip() for s in _SENTENCE_END.split(caption or "") if s.strip(" .!?;\n")]


def parse_verdict(text: str | None) -> str | None:
    """'covered' | 'missing' | 'contradicted', the last one stated; None when the reply states none."""
    found = _VERDICT.findall(text or "")
    return found[-1].lower() if found else None


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the word n-grams of `text` that already occurred earlier in it (0: no repeats; near 1: a loop)."""
    words = re.findall(r"\w+", (text or "").lower())
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def caption_metrics(verdicts: list[str | None], captions: list[str]) -> dict:
    """Aggregate figures: `verdicts` has one entry per (video, fact), None for an unparsed check (counted apart,
    never guessed); `captions` are the model's captions of the same videos."""
    checked = [v for v in verdicts if v in FACT_VERDICTS]
    share = (lambda kind: sum(v == kind for v in checked) / len(checked)) if checked else (lambda kind: None)
    return {
        "caption_videos": len(captions),
        "caption_facts": len(verdicts),
        "caption_missing_rate": share("missing"),
        "caption_contradiction_rate": share("contradicted"),
        "caption_covered_rate": share("covered"),
        "caption_unparsed_checks": len(verdicts) - len(checked),
        "caption_repetition_rate": sum(map(repetition_rate, captions)) / len(captions) if captions else None,
        "caption_mean_words": sum(len(c.split()) for c in captions) / len(captions) if captions else None,
    }
