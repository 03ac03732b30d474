"""The RLAIF loop (shared/design.md §1) after ingest, as a table of stages:

    caption → questions → eval of the starting policy
    for each round r:  [describe] → rollout → judge → pairs (+ reference log-probs) → train (+ weight broadcast) → eval
    [rebirth → eval]

Each stage is a function of one StageContext (pipelines.stages.base) that declares the config it depends on;
`describe` is i-SRT's self-retrospection (caption.self_retrospection), `rebirth` video-SALMONN 2's rebirth tuning
(rebirth.enabled), and rollout and judge run as one streaming stage with loop.stream_judge. Every stage is recorded
in manifest.json (pipelines.orchestration.resume); `--resume` skips stages that finished with the same config.
Before a round, the policy engines are brought to the policy the round starts from (after a resume, from the saved
round folder; after training, the trainer's broadcast has done it already).
"""
from __future__ import annotations

import logging
import time

from actors.pool import pool_stats
from rlaif.config import RunConfig
from rlaif.layout import PolicyLayout, RunLayout
from rlaif.models import resolve_model

from pipelines.apps.run_report import refresh_report
from pipelines.orchestration.resume import Stages
from pipelines.stages.base import StageContext
from pipelines.stages.caption import caption
from pipelines.stages.describe import describe
from pipelines.stages.evaluate import evaluate
from pipelines.stages.judge import judge, rollout_judge
from pipelines.stages.pairs import pairs
from pipelines.stages.questions import questions
from pipelines.stages.rebirth import rebirth
from pipelines.stages.rollout import rollout
from pipelines.stages.train import train

log = logging.getLogger(__name__)


def round_stages(cfg: RunConfig) -> list[tuple[str, object]]:
    """The stages of one round, in order: (name within the round, stage function)."""
    return ([("describe", describe)] if cfg.caption.self_retrospection else []) + (
        [("rollout_judge", rollout_judge)] if cfg.loop.stream_judge else [("rollout", rollout), ("judge", judge)]) + [
        ("pairs", pairs), ("train", train), ("eval", evaluate)]


def run_loop(ctx: StageContext, stages: Stages) -> list[dict]:
    """Runs the loop in ctx.layout with ctx.pools (ready, held by the caller); returns every eval's figures."""
    cfg, layout, manifest = ctx.cfg, ctx.layout, stages.manifest
    start = resolve_model(cfg.models.policy)
    ctx = ctx.at(policy=start, start=start)
    hold(ctx, start)  # also overwrites what a crashed earlier run recorded for restarted engines
    stages.run_stage("caption", caption, ctx)
    stages.run_stage("questions", questions, ctx)
    evals = [stages.run_stage("round_base/eval", evaluate, ctx)]
    refresh_report(layout.dir)  # report.md/.html after every eval, to watch a running job (never fails the run)

    for r in range(cfg.loop.rounds):
        ctx = ctx.at(round=r, reference=start if cfg.train.reference == "fixed" else ctx.policy,
                     evidence=layout.round(r).captions if cfg.caption.self_retrospection else None)
        ctx.out.dir.mkdir()
        hold(ctx, ctx.policy)
        for name, fn in round_stages(cfg):
            result = stages.run_stage(f"round_{r}/{name}", fn, ctx)
            if fn is train:
                ctx = after_training(ctx, result)
        evals.append(result)
        refresh_report(layout.dir)
    manifest.data["final_policy"] = ctx.policy
    manifest.record("loop", "done", stages.key, rounds=cfg.loop.rounds, final_policy=ctx.policy)

    if cfg.rebirth.enabled:
        ctx = ctx.at(round=cfg.loop.rounds, evidence=None)
        reborn = stages.run_stage("rebirth/train", rebirth, ctx)
        ctx = after_training(ctx, reborn)
        manifest.data["reborn_policy"] = ctx.policy
        evals.append(stages.run_stage("rebirth/eval", evaluate, ctx))
    try:  # the engines' final counters (busy_s: bench/round.py's idle shares); never worth failing a finished run
        manifest.put("pools", pool_stats(ctx.pools, time.time()))
    except Exception as err:  # noqa: BLE001
        log.warning("engine pool stats not recorded: %s", err)
    refresh_report(layout.dir)  # the finished run's (after rebirth, if any)
    return evals


def hold(ctx: StageContext, policy: str) -> None:
    """The policy engines serve `policy`: engines holding other weights (a resumed run whose training was skipped,
    an engine Ray restarted) get it; after training the trainer's broadcast did it already, so this is a no-op."""
    ctx.policy_pool.hold(policy, ctx.cfg.loop.sync_bucket_mb)


def after_training(ctx: StageContext, result: dict) -> StageContext:
    """The context after a train stage: its policy (and LoRA adapter) if it trained, and the engines holding it."""
    folder = ctx.out.policy
    if result.get("skipped") or not folder.exists():
        return ctx
    adapter = PolicyLayout(folder).adapter
    ctx = ctx.at(policy=str(folder), adapter=str(adapter) if adapter.exists() else ctx.adapter)
    hold(ctx, ctx.policy)
    return ctx
