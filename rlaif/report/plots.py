"""The report's plots, drawn from plain numbers into PNG bytes. Each returns None when it has nothing to draw yet
(a run that has only evaluated its starting policy has no training steps).

Figures are made with matplotlib's object API (`Figure`, no pyplot): no global backend or figure registry, so a
report drawn inside a running job touches nothing else in the process.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from typing import Iterable, Mapping

from matplotlib.figure import Figure

SCORES = (1, 2, 3, 4, 5)
SCORE_COLOURS = ("#c0392b", "#e67e22", "#f1c40f", "#7dbb5a", "#1e8449")
UNSCORED = "#b0b6bd"


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    return out.getvalue()


def _nan(v):
    return float("nan") if v is None else v


def score_counts(scores: Iterable[float | None]) -> Counter:
    """How many answers got each score 1..5 (a fractional score, after a length penalty or an aspect mean, counts at
    its nearest integer), None for those the judge left unscored: a batch's counts add to the others' (Counter)."""
    return Counter(None if s is None else min(5, max(1, round(s))) for s in scores)


def score_shares(counts: Mapping[int | None, int]) -> tuple[list[float], float]:
    """Share of answers per score 1..5 and the share left unscored, from score_counts."""
    n = sum(counts.values()) or 1
    return [counts.get(k, 0) / n for k in SCORES], counts.get(None, 0) / n


def judge_scores(scores: dict[str, Mapping[int | None, int]]) -> bytes | None:
    """Stacked bars, one per round (label -> the held-out answers' score_counts): the share of each score 1-5."""
    if not scores:
        return None
    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots()
    labels = list(scores)
    bottoms = [0.0] * len(labels)
    split = [score_shares(v) for v in scores.values()]
    for k, colour in zip(range(len(SCORES)), SCORE_COLOURS):
        heights = [shares[k] for shares, _ in split]
        ax.bar(labels, heights, bottom=bottoms, color=colour, label=f"score {SCORES[k]}", width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    if any(unscored for _, unscored in split):
        ax.bar(labels, [u for _, u in split], bottom=bottoms, color=UNSCORED, label="unscored", width=0.6)
    for i, v in enumerate(scores.values()):
        ax.text(i, 1.02, f"n={sum(v.values())}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of held-out answers")
    ax.set_title("the judge's scores of the held-out answers", fontsize=11)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, reverse=True)
    fig.tight_layout()
    return _png(fig)


SHARES = [("exact_match", "exact match (ground truth)"), ("accuracy", "judge: share >= 3"),
          ("judge_agreement", "judge agrees with ground truth")]


def heldout(rows: list[tuple[str, dict]]) -> bytes | None:
    """Per round (label, its eval.json): the shares of SHARES, and the mean judge score."""
    if not rows:
        return None
    fig = Figure(figsize=(11, 3.4))
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    labels = [label for label, _ in rows]
    for key, name in SHARES:
        ys = [_nan(r.get(key)) for _, r in rows]
        if not all(math.isnan(y) for y in ys):
            left.plot(labels, ys, marker="o", label=name)
    left.set_ylim(-0.03, 1.03)
    left.set_title("held-out figures per round", fontsize=11)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot(labels, [_nan(r.get("mean_score")) for _, r in rows], marker="o", color="C3")
    right.set_ylim(0.9, 5.1)
    right.set_title("mean judge score (1-5)", fontsize=11)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


STEP_KEYS = [("loss", "loss"), ("reward_margin", "DPO reward margin"), ("reward_accuracy", "DPO reward accuracy")]


def training(histories: list[tuple[str, list[dict]]]) -> bytes | None:
    """Per training stage (label, its per-step history): each of STEP_KEYS a step has, against the run's step count;
    one colour per stage, so rounds read left to right."""
    histories = [(label, h) for label, h in histories if h]
    keys = [(k, name) for k, name in STEP_KEYS if any(k in step for _, h in histories for step in h)]
    if not keys:
        return None
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (key, name) in zip(axes, keys):
        offset = 0
        for i, (label, history) in enumerate(histories):
            xs = [offset + k + 1 for k in range(len(history))]
            ax.plot(xs, [_nan(s.get(key)) for s in history], marker=".", color=f"C{i}", label=label)
            offset += len(history)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("training step (all rounds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def pairs(rows: list[tuple[str, int | None, int | None]]) -> bytes | None:
    """Per round (label, pairs kept, training questions): how many questions gave a pair to train on."""
    if not rows:
        return None
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    labels = [label for label, _, _ in rows]
    if any(q is not None for _, _, q in rows):
        ax.bar(labels, [q or 0 for _, _, q in rows], color="#d5dbe1", width=0.6, label="training questions")
    ax.bar(labels, [k or 0 for _, k, _ in rows], color="C0", width=0.4, label="pairs kept")
    for i, (_, kept, _) in enumerate(rows):
        ax.text(i, kept or 0, str(kept), ha="center", va="bottom", fontsize=8)
    ax.set_title("preference pairs per round", fontsize=11)
    ax.set_ylim(0, 1.3 * max([1] + [v or 0 for row in rows for v in row[1:]]))  # room for the legend above the bars
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def stage_times(seconds: list[tuple[str, float]]) -> bytes | None:
    """Horizontal bars: each stage's seconds, in the order the stages ran (the first at the top)."""
    if not seconds:
        return None
    fig = Figure(figsize=(9, 0.9 + 0.28 * len(seconds)))
    ax = fig.subplots()
    names = [name for name, _ in seconds]
    ax.barh(names, [s for _, s in seconds], color="C0")
    for i, (_, s) in enumerate(seconds):
        ax.text(s, i, f" {s:.1f} s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("stage times", fontsize=11)
    ax.margins(x=0.12)
    fig.tight_layout()
    return _png(fig)
