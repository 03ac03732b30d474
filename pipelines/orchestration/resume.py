"""Named stages of a run, each recorded in manifest.json with the hash of the config it depends on.

A stage's hash covers the config sections it declares (pipelines.stages.base.stage) and those of every stage run
before it in this run folder: its inputs are their outputs. With `resume`, a stage recorded as done with the same
hash is skipped, until one stage has to be redone: from then on every later stage is redone too, because its inputs
may have changed.
"""
from __future__ import annotations

import logging
import resource
import time
from typing import Callable

from rlaif.config import RunConfig
from rlaif.manifest import Manifest

from pipelines.orchestration import console

log = logging.getLogger(__name__)

# The run folder's layout and hashing scheme (rlaif.layout, cumulative hashes). A folder written under another one
# is not resumed: its file names or hashes may not mean what this version expects.
LAYOUT_VERSION = 2


class LayoutMismatch(RuntimeError):
    pass


class Stages:
    """Runs named stages once, recording them in the manifest."""

    def __init__(self, cfg: RunConfig, manifest: Manifest, resume: bool):
        self.cfg, self.manifest, self.resume = cfg, manifest, resume
        self.ran_now: set[str] = set()  # stages executed by this process (not skipped on resume)
        self.read: set[str] = set()  # config sections read by the stages so far
        found = manifest.data.get("layout_version")
        if resume and manifest.data["stages"] and found != LAYOUT_VERSION:
            raise LayoutMismatch(
                f"{manifest.run_dir} was written by an earlier version of ray-rlaif (run-folder layout "
                f"{found or 1}, this version writes {LAYOUT_VERSION}) and cannot be resumed: start a new run folder")
        if manifest.data.get("layout_version") != LAYOUT_VERSION:
            manifest.put("layout_version", LAYOUT_VERSION)

    def run(self, name: str, depends: tuple[str, ...], fn: Callable[[], dict | int]) -> dict:
        """Runs `fn` as stage `name` unless it is done already with the same config (module docstring)."""
        self.read |= set(depends)
        key = self.cfg.hash(*sorted(self.read))
        # Once a stage has been redone, everything after it is redone too: its inputs may have changed.
        if self.resume and not self.ran_now and self.manifest.is_done(name, key):
            log.info("%s: done already, skipping", name)
            console.skipped(name, self.manifest.run_dir)
            return self.manifest.stage(name)
        self.manifest.record(name, "running", key)
        start, peak_before = time.time(), _peak_rss_mb()
        with console.stage(name, self.manifest.run_dir):  # the stage's live line (a quiet console's)
            info = fn()
        info = info if isinstance(info, dict) else {"rows": info}
        self.ran_now.add(name)
        # The driver's memory high-water mark at the stage's start and end: a rise within a stage is the stage's, a
        # rise between the previous stage's end and this one's start is the runner's (pools starting, weights held).
        self.manifest.record(name, "done", key, **{**info, "seconds": round(time.time() - start, 2),
                                                   "driver_peak_rss_mb_at_start": peak_before,
                                                   "driver_peak_rss_mb": _peak_rss_mb()})
        log.info("%s: done in %.1f s", name, time.time() - start)
        return self.manifest.stage(name)

    def run_stage(self, name: str, fn, ctx) -> dict:
        """A stage of the contract (pipelines.stages.base): `fn(ctx)`, hashed on the sections `fn` declares."""
        return self.run(name, fn.depends, lambda: fn(ctx))

    @property
    def key(self) -> str:
        """The hash of every config section read so far (what the finished loop is recorded with)."""
        return self.cfg.hash(*sorted(self.read))


def _peak_rss_mb() -> float:
    """This process's memory high-water mark so far, MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
