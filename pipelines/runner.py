"""Runs the stages of a config in order inside one run folder, recording each in manifest.json (pipelines.stages).

With `resume`, anything a killed stage left half-written (hidden *.partial siblings) is removed first, so it is
never trusted, stages finished with the same config are skipped, and an interrupted training stage continues from
its last Ray Train checkpoint.
"""
from __future__ import annotations

import logging
import time

from rlaif.config import RunConfig
from rlaif.manifest import Manifest
from rlaif.storage import RunPath, clean_partials

from pipelines.ingest import IngestResult, run_ingest
from pipelines.stages import Stages

log = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig, run_dir: RunPath | str, resume: bool = False, source=None, loop: bool = True) -> Manifest:
    """Ingest, then (unless `loop` is False) captions, questions and the DPO rounds."""
    if loop:
        cfg.check_inputs()  # before anything starts: a missing input file fails now, not after ingest
    run_dir = RunPath.of(run_dir)
    run_dir.mkdir()
    manifest = Manifest(run_dir)
    if resume and (n := clean_partials(run_dir)):
        log.info("resume: removed %d partial outputs of an interrupted run", n)
    if not resume and loop:
        from pipelines.train import TRAIN_STORAGE

        # A fresh run redoes everything: training checkpoints of an earlier run here must not be resumed from.
        (run_dir / TRAIN_STORAGE).remove()
    manifest.data.update(name=cfg.name, config=cfg.model_dump(mode="json"), started=manifest.data.get("started", time.time()))
    stages = Stages(cfg, manifest, resume)
    stages.run("ingest", ("ingest",), lambda: ingest_info(run_ingest(cfg.ingest, run_dir, source)))
    if loop:
        from pipelines.loop import run_loop

        run_loop(cfg, run_dir, stages)
    return manifest


def ingest_info(result: IngestResult) -> dict:
    return {"rows_in": result.n_inputs, "rows_ok": result.n_ok, "rows_quarantined": result.n_quarantined,
            "reasons": result.reasons}
