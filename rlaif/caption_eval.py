"""video-SALMONN 2's caption evaluation, as pure functions.

A reference caption is split into atomic facts (its sentences: the synthetic clips' ground-truth captions state one
fact per sentence). A judge marks each fact as covered, missing or contradicted by the model's caption
(pipelines.stages.caption_eval asks it); the missing rate and the contradiction (hallucination) rate are the shares of facts
so marked. The repetition rate needs no judge: the share of word 3-grams of a caption that repeat an earlier one,
the degenerate looping that DPO on long outputs is known to cause.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa

from rlaif.prompts import FACT_VERDICTS

# What the judge is asked per fact (fact_rows): the fact and the model's caption it is checked against.
FACT_REQUESTS = pa.schema([("video_id", pa.string()), ("fact_idx", pa.int32()), ("fact", pa.string()),
                           ("caption", pa.string())])

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


@dataclass
class CaptionTally:
    """Running sums behind caption_metrics, added to a batch at a time (the stage scans its tables; nothing whole)."""
    verdicts: Counter = field(default_factory=Counter)  # verdict (None: unparsed) -> checks
    captions: int = 0
    repetition: float = 0.0  # sum of the captions' repetition rates
    words: int = 0

    def add(self, verdicts: Iterable[str | None] = (), captions: Iterable[str] = ()) -> CaptionTally:
        self.verdicts.update(verdicts)
        for c in captions:
            self.captions += 1
            self.repetition += repetition_rate(c)
            self.words += len(c.split())
        return self

    def metrics(self) -> dict:
        facts = sum(self.verdicts.values())
        checked = sum(self.verdicts[v] for v in FACT_VERDICTS)
        share = (lambda kind: self.verdicts[kind] / checked) if checked else (lambda kind: None)
        return {
            "caption_videos": self.captions,
            "caption_facts": facts,
            "caption_missing_rate": share("missing"),
            "caption_contradiction_rate": share("contradicted"),
            "caption_covered_rate": share("covered"),
            "caption_unparsed_checks": facts - checked,
            "caption_repetition_rate": self.repetition / self.captions if self.captions else None,
            "caption_mean_words": self.words / self.captions if self.captions else None,
        }


def caption_metrics(verdicts: list[str | None], captions: list[str]) -> dict:
    """Aggregate figures: `verdicts` has one entry per (video, fact), None for an unparsed check (counted apart,
    never guessed); `captions` are the model's captions of the same videos."""
    return CaptionTally().add(verdicts, captions).metrics()


def fact_rows(table: pa.Table) -> pa.Table:
    """One row per (video, reference fact) of `table` (video_id, caption: the model's, reference: the ground truth):
    video_id, fact_idx, fact, caption: what the judge checks, one fact at a time."""
    rows = [{"video_id": v, "fact_idx": i, "fact": fact, "caption": c}
            for v, c, ref in zip(*(table.column(n).to_pylist() for n in ("video_id", "caption", "reference")))
            for i, fact in enumerate(reference_facts(ref))]
    return pa.Table.from_pylist(rows, schema=FACT_REQUESTS)
