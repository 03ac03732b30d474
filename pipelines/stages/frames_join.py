"""Attach each video's frames to the rows that need them (prompts, pairs, training rows), streaming from
videos.parquet: a Ray Data hash join on video_id, so neither the rows nor the frames pass through the driver.

A join does not keep the rows' order: a caller that needs an order (training, written tables) sorts afterwards.
"""
from __future__ import annotations

import ray.data

from rlaif.storage import RunPath

FRAME_COLUMNS = ["video_id", "frames", "frames_shape", "duration_s"]
ROWS_PER_PARTITION = 2000  # rows per join partition (each partition is joined in one task and becomes one block)
MAX_PARTITIONS = 200


def join_partitions(rows: int) -> int:
    """How many partitions a join of about `rows` rows is split into: few for a small run (each partition costs a
    task), more as the run grows (each is held in memory while it is joined)."""
    return max(1, min(MAX_PARTITIONS, -(-rows // ROWS_PER_PARTITION)))


def rows_with_frames(videos_path: RunPath, items: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """`items` (about `rows` rows with a video_id column) joined to their videos' frames; items whose video is not
    in videos.parquet are dropped."""
    videos = ray.data.read_parquet(str(videos_path), columns=FRAME_COLUMNS)
    return items.join(videos, "inner", join_partitions(rows), on=("video_id",))
