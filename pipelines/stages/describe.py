"""i-SRT's self-retrospection stage: before a round's rollouts, the current policy re-describes each training video
given its previous description (round 0: the run's caption; later: the previous round's re-description). The new
description is that round's evidence for the judge (round_r/captions.parquet), so the evidence improves along with
the policy instead of staying the starting captioner's."""
from __future__ import annotations


import pyarrow.compute as pc

from actors.pool import EnginePool
from rlaif.config import RunConfig
from rlaif.storage import RunPath

from pipelines.stages.caption import caption_videos
from pipelines.stages.io import read_table


def previous_descriptions(run_dir: RunPath, round_idx: int) -> RunPath:
    earlier = run_dir / f"round_{round_idx - 1}" / "captions.parquet"
    return earlier if round_idx > 0 and earlier.exists() else run_dir / "captions.parquet"


def run_describe(cfg: RunConfig, run_dir: RunPath, round_dir: RunPath, round_idx: int, policy: EnginePool) -> dict:
    prompts = read_table(run_dir / "prompts.parquet", ["video_id", "split"])
    train_videos = set(prompts.filter(pc.equal(prompts.column("split"), "train")).column("video_id").to_pylist())
    source = previous_descriptions(run_dir, round_idx)
    previous = {v: c for v, c in zip(*read_table(source, ["video_id", "caption"]).to_pydict().values())
                if v in train_videos}
    sampling = {"n": 1, "temperature": cfg.caption.temperature, "max_tokens": cfg.caption.max_tokens}
    n = caption_videos(run_dir, policy, sampling, round_dir / "captions.parquet", sorted(previous), previous)
    return {"rows": n, "previous": source.relative_to(run_dir).as_posix()}
