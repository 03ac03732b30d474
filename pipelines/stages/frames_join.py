"""Attach each video's frames to the rows that need them (prompts, pairs), streaming from videos.parquet.

The text tables are small and go to every worker as a dict keyed by video_id; the frames are large and stay in
Ray Data: each video row is read once and expanded into its prompt (or pair) rows.
"""
from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
import ray.data

from rlaif.storage import RunPath

FRAME_COLUMNS = ["video_id", "frames", "frames_shape", "duration_s"]


def expand_by_video(batch: pa.Table, items_by_video: dict[str, list[dict]]) -> pa.Table:
    rows = [{**item, **video} for video in batch.select(FRAME_COLUMNS).to_pylist()
            for item in items_by_video.get(video["video_id"], [])]
    return pa.Table.from_pylist(rows) if rows else pa.table({})


def rows_with_frames(videos_path: RunPath, items: pa.Table) -> ray.data.Dataset:
    """`items` (with a video_id column) joined to their videos' frames; videos without items are dropped."""
    by_video: dict[str, list[dict]] = defaultdict(list)
    for item in items.to_pylist():
        by_video[item["video_id"]].append({k: v for k, v in item.items() if k != "video_id"})
    wanted = sorted(by_video)
    return (ray.data.read_parquet(str(videos_path), columns=FRAME_COLUMNS)
            .filter(expr=f"video_id in {wanted!r}" if wanted else "video_id == ''")
            .map_batches(expand_by_video, fn_kwargs={"items_by_video": dict(by_video)},
                         batch_format="pyarrow", batch_size=4, num_cpus=0.1))
