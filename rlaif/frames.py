"""Which frames of a video to keep: uniform over the clip, or at a fixed rate.

A video LMM sees a handful of frames, not the clip. LLaVA-Hound and Qwen2-VL sample uniformly; a fixed rate keeps
temporal density constant across clips of different lengths (capped so a long clip cannot blow the budget).
"""
from __future__ import annotations

import math


def uniform_indices(n_frames: int, num: int) -> list[int]:
    """`num` frame indices spread evenly from the first to the last frame (repeats when the clip is shorter)."""
    if n_frames <= 0:
        raise ValueError("video has no frames")
    if num <= 0:
        raise ValueError("num must be positive")
    if num == 1:
        return [(n_frames - 1) // 2]
    step = (n_frames - 1) / (num - 1)
    return [min(n_frames - 1, int(round(i * step))) for i in range(num)]


def fps_indices(n_frames: int, video_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Frames at `sample_fps` (at least one, at most `max_frames`, then uniform over the clip).

    Falls back to uniform sampling when the container reports no usable frame rate.
    """
    if n_frames <= 0:
        raise ValueError("video has no frames")
    if not video_fps or not math.isfinite(video_fps) or video_fps <= 0:
        return uniform_indices(n_frames, min(n_frames, max_frames))
    duration = n_frames / video_fps
    want = max(1, int(math.floor(duration * sample_fps)))
    if want > max_frames:
        return uniform_indices(n_frames, max_frames)
    step = video_fps / sample_fps
    return [min(n_frames - 1, int(i * step)) for i in range(want)]


def sample_indices(n_frames: int, video_fps: float, *, mode: str, num_frames: int, sample_fps: float) -> list[int]:
    if mode == "uniform":
        return uniform_indices(n_frames, num_frames)
    if mode == "fps":
        return fps_indices(n_frames, video_fps, sample_fps, num_frames)
    raise ValueError(f"unknown sampling mode {mode!r} (expected 'uniform' or 'fps')")
