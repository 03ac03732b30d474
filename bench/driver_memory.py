"""What one stage leaves in the driver's memory: runs `rlaif run CONFIG` in this process up to and including STAGE,
then prints the process's resident memory before the stage, after it, after a garbage collection, and after glibc's
`malloc_trim` (memory the allocator held free but had not returned), with the Python objects' share (tracemalloc,
from the stage's start) and the object references still in scope. What stays after the trim, less the Python
share, is native memory (Ray's core worker, gRPC, Arrow) that the stage left allocated. The run stops after STAGE.

    python bench/driver_memory.py CONFIG RUN_DIR [--stage ingest]

bench/scale.py's runs, kept with `--keep`, hold a config per size (WORK/n1000/scale.yaml, ...).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tracemalloc

import psutil

import common  # noqa: F401  (the repository on sys.path)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("run_dir")
    p.add_argument("--stage", default="ingest")
    args = p.parse_args()

    import ray

    import pipelines.orchestration.resume as resume
    from pipelines.apps import cli

    run_stage = resume.Stages.run_stage
    out = os.fdopen(os.dup(1), "w")  # the terminal: the quiet console sends descriptor 1 to the run's log

    def measured(self, name, fn, ctx):
        if name != args.stage:
            return run_stage(self, name, fn, ctx)
        gc.collect()
        before = rss_mib()
        tracemalloc.start()
        run_stage(self, name, fn, ctx)
        after = rss_mib()
        gc.collect()
        collected = rss_mib()
        python = tracemalloc.get_traced_memory()[0] / 2**20
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = rss_mib()
        refs = len(ray._private.worker.global_worker.core_worker.get_all_reference_counts())
        print(f"{args.stage}: driver RSS {before:.0f} MiB before, {after:.0f} after (+{after - before:.0f}), "
              f"{collected:.0f} after gc, {trimmed:.0f} after malloc_trim (+{trimmed - before:.0f} kept); Python "
              f"objects allocated during the stage and alive: {python:.1f} MiB; object references in scope: {refs}",
              file=out, flush=True)
        os._exit(0)  # the measurement is taken: the rest of the run is not needed

    resume.Stages.run_stage = measured
    cli.main(["run", args.config, "--run", args.run_dir])


if __name__ == "__main__":
    main()
