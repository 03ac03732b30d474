"""The report's gallery: which held-out questions to show, and a strip of the frames the policy saw."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rlaif.frames import uniform_indices
from rlaif.metrics import normalise_answer

STRIP_FRAMES = 8   # at most this many frames in a strip, spread over the clip
STRIP_HEIGHT = 96  # pixels; frames keep their aspect ratio
GAP = 3


def changed(before: str | None, after: str | None) -> bool:
    """The answer says something else (compared as exact match compares: case, articles, number words aside)."""
    return before is not None and after is not None and normalise_answer(before) != normalise_answer(after)


def pick(questions: list[dict], before: dict[str, str], after: dict[str, str], n: int) -> list[dict]:
    """`n` held-out questions (rows with prompt_id, video_id), the same ones for the same run folder: first those whose
    answer changed between `before` and `after` (prompt_id -> answer), then the others; within each, a question of a
    video not shown yet before a second question of one shown (more clips to look at), in prompt_id order."""
    moved = {q["prompt_id"] for q in questions if changed(before.get(q["prompt_id"]), after.get(q["prompt_id"]))}
    out, seen = [], set()
    for group in ([q for q in questions if q["prompt_id"] in moved], [q for q in questions if q["prompt_id"] not in moved]):
        fresh = set()
        for q in sorted(group, key=lambda q: q["prompt_id"]):
            if q["video_id"] not in seen:
                seen.add(q["video_id"])
                fresh.add(q["prompt_id"])
        group = sorted(group, key=lambda q: (q["prompt_id"] not in fresh, q["prompt_id"]))
        out += group
    return out[:n]


def frame_strip(frames: np.ndarray) -> bytes:
    """PNG of up to STRIP_FRAMES of `frames` ((T, H, W, 3) uint8), side by side, STRIP_HEIGHT pixels high."""
    chosen = [frames[i] for i in uniform_indices(len(frames), min(len(frames), STRIP_FRAMES))]
    h, w = frames.shape[1:3]
    width = max(1, round(w * STRIP_HEIGHT / h))
    strip = Image.new("RGB", (len(chosen) * (width + GAP) - GAP, STRIP_HEIGHT), "white")
    for k, frame in enumerate(chosen):
        tile = Image.fromarray(np.ascontiguousarray(frame)).resize((width, STRIP_HEIGHT), Image.Resampling.BILINEAR)
        strip.paste(tile, (k * (width + GAP), 0))
    out = io.BytesIO()
    strip.save(out, format="PNG")
    return out.getvalue()
