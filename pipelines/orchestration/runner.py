"""Runs the stages of a config in order inside one run folder, recording each in manifest.json (pipelines.orchestration.resume).

With `resume`, anything a killed stage left half-written (hidden *.partial siblings) is removed first, so it is
never trusted, stages finished with the same config are skipped, and an interrupted training stage continues from
its last Ray Train checkpoint.
"""
from __future__ import annotations

import logging
import time

import ray

from actors.pool import distinct_pools
from rlaif.config import RunConfig
from rlaif.manifest import Manifest
from rlaif.storage import RunPath, clean_partials

from pipelines.stages.ingest import IngestResult, run_ingest
from pipelines.orchestration.resume import Stages

log = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig, run_dir: RunPath | str, resume: bool = False, source=None, loop: bool = True) -> Manifest:
    """Ingest, then (unless `loop` is False) captions, questions and the DPO rounds. A loop's engines start before
    ingest when the cluster has room for a decoder beside them: they load while videos decode, and caption each
    decoded batch as it comes (caption.during_ingest)."""
    if loop:
        cfg.check_inputs()  # before anything starts: a missing input file fails now, not after ingest
    run_dir = RunPath.of(run_dir)
    run_dir.mkdir()
    manifest = Manifest(run_dir)
    if resume and (n := clean_partials(run_dir)):
        log.info("resume: removed %d partial outputs of an interrupted run", n)
    if not resume and loop:
        from pipelines.stages.train import TRAIN_STORAGE

        # A fresh run redoes everything: training checkpoints of an earlier run here must not be resumed from.
        (run_dir / TRAIN_STORAGE).remove()
    manifest.data.update(name=cfg.name, config=cfg.model_dump(mode="json"), started=manifest.data.get("started", time.time()))
    stages = Stages(cfg, manifest, resume)
    pools = start_pools_before_ingest(cfg, run_dir) if loop else None
    try:
        caption = caption_during_ingest(cfg, pools)
        ingest = stages.run("ingest", ("ingest",), lambda: ingest_info(run_ingest(cfg.ingest, run_dir, source, caption)))
        if loop:
            from pipelines.orchestration.loop import run_loop
            from pipelines.orchestration.pools import start_pools

            pools = pools or start_pools(cfg, run_dir)
            run_loop(cfg, run_dir, stages, pools, captioned_during_ingest="ingest" in stages.ran_now and ingest["captioned"])
    finally:
        for pool in distinct_pools(pools or {}):
            pool.shutdown()
    return manifest


def start_pools_before_ingest(cfg: RunConfig, run_dir: RunPath) -> dict | None:
    """The loop's pools, started without waiting for them, when the cluster has a CPU for a decode actor beside
    their engines (else None: they start after ingest, which then has the CPUs to itself)."""
    from pipelines.orchestration.pools import engine_cpus, pool_specs, start_pools

    spare = ray.cluster_resources().get("CPU", 0) - engine_cpus(pool_specs(cfg, run_dir))
    if spare < 1:
        log.info("engines start after ingest: %.1f CPUs beside them, a decoder needs 1", spare)
        return None
    return start_pools(cfg, run_dir, wait=False)


def caption_during_ingest(cfg: RunConfig, pools: dict | None):
    """What ingest needs to caption as it decodes (caption.during_ingest), or None."""
    if pools is None or cfg.caption.source != "model" or not cfg.caption.during_ingest:
        return None
    from pipelines.stages.caption import CaptionDuringIngest, caption_sampling

    return CaptionDuringIngest(pools["captioner"], caption_sampling(cfg))


def ingest_info(result: IngestResult) -> dict:
    return {"rows_in": result.n_inputs, "rows_ok": result.n_ok, "rows_quarantined": result.n_quarantined,
            "reasons": result.reasons, "captioned": bool(result.captions_path)}
