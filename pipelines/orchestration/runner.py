"""Runs the stages of a config in order inside one run folder, recording each in manifest.json (pipelines.orchestration.resume).

With `resume`, anything a killed stage left half-written (hidden *.partial siblings) is removed first, so it is
never trusted, stages finished with the same config are skipped, and an interrupted training stage continues from
its last Ray Train checkpoint.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext

from rlaif.config import RunConfig
from rlaif.layout import RunLayout
from rlaif.manifest import Manifest
from rlaif.storage import RunPath, clean_partials

from pipelines.orchestration.pools import EnginePools
from pipelines.orchestration.resume import Stages
from pipelines.stages.base import StageContext
from pipelines.stages.ingest import ingest
from pipelines.stages.joins import set_broadcast_rows

log = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig, run_dir: RunPath | str, resume: bool = False, source=None, loop: bool = True) -> Manifest:
    """Ingest, then (unless `loop` is False) captions, questions and the DPO rounds. A loop's engines start before
    ingest when the cluster has room for a decoder beside them: they load while videos decode, and caption each
    decoded batch as it comes (caption.during_ingest)."""
    if loop:
        cfg.check_inputs()  # before anything starts: a missing input file fails now, not after ingest
    set_broadcast_rows(cfg.ray.broadcast_join_rows)  # how this run's stages join their tables
    layout = RunLayout(run_dir)
    layout.dir.mkdir()
    manifest = Manifest(layout.dir)
    if resume and (n := clean_partials(layout.dir)):
        log.info("resume: removed %d partial outputs of an interrupted run", n)
    if not resume and loop:
        # A fresh run redoes everything. Training checkpoints of an earlier run here must not be resumed from, and the
        # policy its engines last served (policy_engines.json, which a restarted engine loads) must not be loaded by
        # this run's engines: they caption the videos before the loop first syncs them the starting policy.
        layout.train_storage.remove()
        layout.policy_engines.remove()
    manifest.data.update(name=cfg.name, config=cfg.model_dump(mode="json"), started=manifest.data.get("started", time.time()))
    stages = Stages(cfg, manifest, resume)
    # The loop's pools, from plan to shutdown: started before ingest (without waiting) when the cluster has room for
    # a decoder beside them, else after it; every one shut down on the way out, however the run ends.
    with (EnginePools(cfg, layout.dir, start_early=True) if loop else nullcontext({})) as pools:
        ctx = StageContext(cfg, layout, pools=pools, source=source)  # pools empty until started: ingest captions
        ingested = stages.run_stage("ingest", ingest, ctx)           # as it decodes only when they are up already
        if loop:
            from pipelines.orchestration.loop import run_loop

            run_loop(ctx.at(pools=pools.wait_ready(),
                            captioned_during_ingest="ingest" in stages.ran_now and ingested["captioned"]), stages)
    return manifest
