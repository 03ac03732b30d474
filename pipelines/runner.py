"""Runs the stages of a config in order inside one run folder, recording each in manifest.json.

With `resume`, a stage whose manifest entry says done with the same config hash is skipped; anything a killed stage
left half-written (hidden *.partial siblings) is removed first, so it is never trusted.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from rlaif.config import RunConfig
from rlaif.manifest import Manifest, clean_partials

from pipelines.ingest import run_ingest

log = logging.getLogger(__name__)


def ingest_stage(cfg: RunConfig, run_dir: Path, manifest: Manifest, resume: bool, source=None) -> dict:
    key = cfg.hash("ingest")
    if resume and manifest.is_done("ingest", key):
        log.info("ingest: done already (resume), skipping")
        return manifest.stage("ingest")
    manifest.record("ingest", "running", key)
    result = run_ingest(cfg.ingest, run_dir, source)
    manifest.record("ingest", "done", key, rows_in=result.n_inputs, rows_ok=result.n_ok,
                    rows_quarantined=result.n_quarantined, reasons=result.reasons, seconds=round(result.seconds, 2))
    return manifest.stage("ingest")


def run_pipeline(cfg: RunConfig, run_dir: Path, resume: bool = False, source=None, loop: bool = True) -> Manifest:
    """Ingest, then (unless `loop` is False) captions, questions and the DPO rounds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    if resume and (n := clean_partials(run_dir)):
        log.info("resume: removed %d partial outputs of an interrupted run", n)
    manifest.data.update(name=cfg.name, config=cfg.model_dump(mode="json"), started=manifest.data.get("started", time.time()))
    ingest_stage(cfg, run_dir, manifest, resume, source)
    if loop:
        from pipelines.loop import run_loop

        run_loop(cfg, run_dir, manifest, resume)
    return manifest
