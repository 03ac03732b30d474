"""What one stage leaves in the driver's memory: runs `rlaif run CONFIG` in this process up to and including STAGE,
then prints the process's resident memory before the stage, its highest during the stage (sampled every 0.1 s), after it, after a garbage collection, and after glibc's
`malloc_trim` and Arrow's `release_unused` (memory the allocators held free but had not returned), with the Python
objects' share (tracemalloc, from the stage's start), the object references still in scope, Arrow's allocated bytes
and the kernel's split of the resident memory (anonymous: the heaps; file-backed; shared: pages of Ray's object store
the driver touched). What stays after the trim, less the Python share, is native memory (Ray's core worker, gRPC,
Arrow) that the stage left allocated, or shared pages it keeps mapped. The run stops after STAGE.

    python bench/driver_memory.py CONFIG RUN_DIR [--stage ingest]

bench/scale.py's runs, kept with `--keep`, hold a config per size (WORK/n1000/scale.yaml, ...).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import tracemalloc

import psutil

import common  # noqa: F401  (the repository on sys.path)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def rss_parts() -> str:
    """The kernel's split of the resident memory: anonymous (the heaps), file-backed, shared (Ray's object store
    pages the driver mapped and touched count here)."""
    with open("/proc/self/status") as f:
        parts = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f) if k.startswith("Rss")}
    return ", ".join(f"{k[3:].lower()} {v:.0f}" for k, v in parts.items() if k != "Rss")


def anon_regions() -> str:
    """Resident anonymous memory by the mapping it is in (/proc/self/smaps): glibc's main heap ([heap]), mappings of
    60 MiB or more (glibc's per-thread malloc arenas reserve 64 MiB each), of 8-9 MiB (thread stacks), and the
    rest (mmapped large allocations, Python's arenas); and the process's threads."""
    kinds: dict[str, float] = {}
    kind = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                size = (end - start) / 2**20
                kind = ("[heap]" if path == "[heap]" else None if path else
                        ">= 60 MiB maps" if size >= 60 else "8-9 MiB maps" if 8 <= size < 9 else "other anon")
            elif head[0] == "Rss:" and kind:
                kinds[kind] = kinds.get(kind, 0) + int(head[1]) / 1024
    threads = len(os.listdir("/proc/self/task"))
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(kinds.items())) + f"; {threads} threads"


def pymalloc() -> str:
    """Python's small-object allocator: the arenas it holds (mmapped, 1 MiB each: malloc_trim cannot return them)
    against the bytes its live objects use in them (sys._debugmallocstats, which writes to descriptor 2)."""
    import re
    import tempfile

    with tempfile.TemporaryFile("w+") as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()

    arenas = re.search(r"(\d+) arenas \* (\d+) bytes/arena", text)
    used = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    if not (arenas and used):
        return f"Python's arenas: not read ({len(text)} characters of allocator statistics)"
    return (f"Python's arenas: {int(arenas.group(1)) * int(arenas.group(2)) / 2**20:.0f} MiB held, "
            f"{int(used.group(1).replace(',', '')) / 2**20:.1f} MiB of it in use")


def arrow_pool() -> str:
    import pyarrow as pa

    pool = pa.default_memory_pool()
    return f"Arrow's {pool.backend_name} pool: {pool.bytes_allocated() / 2**20:.1f} MiB allocated"


def heap_dump(prefix: str | None, when: str) -> None:
    """With jemalloc preloaded and profiling on (--heap-dumps), its sampled heap profile now, to PREFIX.WHEN.heap."""
    if prefix:
        path = f"{prefix}.{when}.heap".encode()
        jemalloc = ctypes.CDLL(None)  # the preloaded allocator's symbols
        name = ctypes.c_char_p(path)
        if jemalloc.mallctl(b"prof.dump", None, None, ctypes.byref(name), ctypes.sizeof(name)):
            raise RuntimeError("jemalloc's prof.dump failed: preload it with MALLOC_CONF=prof:true")


class PeakRss:
    """The highest resident memory seen, sampled every 0.1 s on a thread, until stop()."""

    def __init__(self):
        import threading

        self.highest, self.done = rss_mib(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while not self.done.wait(0.1):
            self.highest = max(self.highest, rss_mib())

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return max(self.highest, rss_mib())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("run_dir")
    p.add_argument("--stage", default="ingest")
    p.add_argument("--heap-dumps", metavar="PREFIX",
                   help="jemalloc heap profiles before and after the stage, for `jeprof --base=PREFIX.before.heap` "
                        "(run with LD_PRELOAD=<ray>/core/libjemalloc.so MALLOC_CONF=prof:true,lg_prof_sample:16)")
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
        before, parts_before = rss_mib(), rss_parts()
        heap_dump(args.heap_dumps, "before")
        arenas_before, regions_before = pymalloc(), anon_regions()
        tracemalloc.start()
        peak = PeakRss()
        run_stage(self, name, fn, ctx)
        after, highest = rss_mib(), peak.stop()
        gc.collect()
        collected = rss_mib()
        python, python_peak = (m / 2**20 for m in tracemalloc.get_traced_memory())
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
        trimmed = rss_mib()
        heap_dump(args.heap_dumps, "after")
        tracemalloc.stop()
        arenas_after, regions_after = pymalloc(), anon_regions()
        refs = len(ray._private.worker.global_worker.core_worker.get_all_reference_counts())
        print(f"{args.stage}: driver RSS {before:.0f} MiB before, {highest:.0f} at most during the stage "
              f"(+{highest - before:.0f}), {after:.0f} after (+{after - before:.0f}), "
              f"{collected:.0f} after gc, {trimmed:.0f} after malloc_trim and Arrow's release_unused "
              f"(+{trimmed - before:.0f} kept); Python objects allocated during the stage: at most {python_peak:.1f} MiB, "
              f"alive after it {python:.1f} MiB; object references in scope: {refs}; {arrow_pool()}\n"
              f"  resident MiB by kind, before: {parts_before}; after: {rss_parts()}\n"
              f"  before: {arenas_before}; after: {arenas_after}\n"
              f"  resident anonymous MiB by mapping, before: {regions_before}; after: {regions_after}",
              file=out, flush=True)
        os._exit(0)  # the measurement is taken: the rest of the run is not needed

    resume.Stages.run_stage = measured
    cli.main(["run", args.config, "--run", args.run_dir])


if __name__ == "__main__":
    main()
