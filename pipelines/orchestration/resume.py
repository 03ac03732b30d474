"""Named stages of a run, each recorded in manifest.json with the hash of the config sections it depends on.

With `resume`, a stage recorded as done with the same hash is skipped, until one stage has to be redone: from then
on every later stage is redone too, because its inputs may have changed.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from rlaif.config import RunConfig
from rlaif.manifest import Manifest

log = logging.getLogger(__name__)


class Stages:
    """Runs named stages once, recording them in the manifest."""

    def __init__(self, cfg: RunConfig, manifest: Manifest, resume: bool):
        self.cfg, self.manifest, self.resume = cfg, manifest, resume
        self.ran_now: set[str] = set()  # stages executed by this process (not skipped on resume)

    def run(self, name: str, depends: tuple[str, ...], fn: Callable[[], dict | int]) -> dict:
        key = self.cfg.hash(*depends)
        # Once a stage has been redone, everything after it is redone too: its inputs may have changed.
        if self.resume and not self.ran_now and self.manifest.is_done(name, key):
            log.info("%s: done already, skipping", name)
            return self.manifest.stage(name)
        self.manifest.record(name, "running", key)
        start = time.time()
        info = fn()
        info = info if isinstance(info, dict) else {"rows": info}
        self.ran_now.add(name)
        self.manifest.record(name, "done", key, **{**info, "seconds": round(time.time() - start, 2)})
        log.info("%s: done in %.1f s", name, time.time() - start)
        return self.manifest.stage(name)
