"""The RLAIF loop (shared/design.md §1) after ingest:

    caption → questions → eval of the starting policy
    for each round r:  [describe] → rollout → judge → pairs (+ reference log-probs) → train (+ weight broadcast) → eval
    [rebirth]

`describe` is i-SRT's self-retrospection (caption.self_retrospection); `rebirth` is video-SALMONN 2's rebirth tuning
(rebirth.enabled). Rollout and judge run as one streaming stage (loop.stream_judge). Every stage is recorded in
manifest.json with a hash of the config it depends on (pipelines.orchestration.resume); `--resume` skips stages that finished with
the same hash. Engines are started once; before a stage that generates with the policy, the engines are brought to
the policy that stage expects (after a resume, from the saved round folder).
"""
from __future__ import annotations

import logging
import time

from actors.pool import EnginePool, distinct_pools, pool_stats
from rlaif.config import RunConfig
from rlaif.storage import RunPath
from rlaif.models import resolve_model

from pipelines.stages.caption import run_caption
from pipelines.stages.describe import run_describe
from pipelines.stages.evaluate import run_eval
from pipelines.stages.judge import answer_and_judge, judge_answers
from pipelines.stages.pairs import run_pairs
from pipelines.stages.questions import run_questions
from pipelines.stages.rebirth import run_rebirth
from pipelines.stages.rollout import generate_answers
from pipelines.orchestration.resume import Stages
from pipelines.stages.train import train_round

log = logging.getLogger(__name__)

# Which config sections each stage's output depends on (a change there redoes the stage and everything after).
DEPENDS = {
    "caption": ("ingest", "models", "caption"),
    "questions": ("ingest", "models", "caption", "questions"),
    "round": ("ingest", "models", "caption", "questions", "rollout", "judge", "pairs", "train", "loop", "eval", "seed"),
    "rebirth": ("ingest", "models", "caption", "questions", "rollout", "judge", "pairs", "train", "loop", "eval",
                "rebirth", "seed"),
}


def run_loop(cfg: RunConfig, run_dir: RunPath, stages: Stages, pools: dict[str, EnginePool | None],
             captioned_during_ingest: bool = False) -> list[dict]:
    """`pools` (start_pools) are shut down by the caller. `captioned_during_ingest`: this run's ingest stream wrote
    captions.parquet already (pipelines.stages.caption.CaptionDuringIngest)."""
    manifest = stages.manifest
    for p in distinct_pools(pools):
        p.wait_ready()
    policy, judge = pools["policy"], pools["judge"]
    responders = [policy] + [p for k, p in pools.items() if k.startswith("extra:")]
    start_path = resolve_model(cfg.models.policy)

    def serve(path: str) -> None:
        # Engines holding other weights (a resumed run whose training was skipped, an engine Ray restarted) get
        # `path`; the trainer's own broadcast labels the engines with its folder, so after training this is a no-op.
        policy.hold(path, cfg.loop.sync_bucket_mb)

    def trained_policy(result: dict, folder: RunPath, current: str) -> str:
        return current if result.get("skipped") or not folder.exists() else str(folder)

    serve(start_path)  # also overwrites what a crashed earlier run recorded for restarted engines
    stages.run("caption", DEPENDS["caption"],
               lambda: run_caption(cfg, run_dir, pools["captioner"], during_ingest=captioned_during_ingest))
    stages.run("questions", DEPENDS["questions"], lambda: run_questions(cfg, run_dir, judge))
    evals = [stages.run("round_base/eval", DEPENDS["round"],
                        lambda: run_eval(cfg, run_dir, run_dir / "round_base", policy, judge, -1))]

    current, adapter = start_path, None
    for r in range(cfg.loop.rounds):
        rd = run_dir / f"round_{r}"
        rd.mkdir()
        policy_in, adapter_in = current, adapter
        reference = start_path if cfg.train.reference == "fixed" else policy_in
        serve(policy_in)
        evidence = None
        if cfg.caption.self_retrospection:
            stages.run(f"round_{r}/describe", DEPENDS["round"], lambda: run_describe(cfg, run_dir, rd, r, policy))
            evidence = rd / "captions.parquet"
        sampling = {"n": cfg.rollout.samples_per_prompt, "temperature": cfg.rollout.temperature,
                    "top_p": cfg.rollout.top_p, "max_tokens": cfg.rollout.max_tokens}
        answers, judged = rd / "rollouts.parquet", rd / "judgments.parquet"
        if cfg.loop.stream_judge:
            stages.run(f"round_{r}/rollout_judge", DEPENDS["round"],
                       lambda: answer_and_judge(run_dir, responders, judge, cfg.judge, "train", sampling, r, answers,
                                                judged, evidence))
        else:
            stages.run(f"round_{r}/rollout", DEPENDS["round"],
                       lambda: generate_answers(run_dir, responders, "train", sampling, r, answers))
            stages.run(f"round_{r}/judge", DEPENDS["round"],
                       lambda: judge_answers(run_dir, judge, cfg.judge, answers, judged, evidence))
        stages.run(f"round_{r}/pairs", DEPENDS["round"], lambda: run_pairs(cfg, run_dir, rd, r, reference))
        trained = stages.run(f"round_{r}/train", DEPENDS["round"],
                             lambda: train_round(cfg, run_dir, rd, policy_in=policy_in, start=start_path,
                                                 reference=reference, engines=policy.actors,
                                                 previous_adapter=adapter_in))
        current = trained_policy(trained, rd / "policy", current)
        if current == str(rd / "policy") and (rd / "policy" / "adapter").exists():
            adapter = str(rd / "policy" / "adapter")
        serve(current)
        evals.append(stages.run(f"round_{r}/eval", DEPENDS["round"],
                                lambda: run_eval(cfg, run_dir, rd, policy, judge, r)))
    manifest.data["final_policy"] = current
    manifest.record("loop", "done", cfg.hash(*DEPENDS["round"]), rounds=cfg.loop.rounds, final_policy=current)
    if cfg.rebirth.enabled:
        rb = run_dir / "rebirth"
        reborn = stages.run("rebirth/train", DEPENDS["rebirth"], lambda: run_rebirth(cfg, run_dir, rb, policy, start_path))
        manifest.data["reborn_policy"] = trained_policy(reborn, rb / "policy", current)
        serve(manifest.data["reborn_policy"])
        evals.append(stages.run("rebirth/eval", DEPENDS["rebirth"],
                                lambda: run_eval(cfg, run_dir, rb, policy, judge, cfg.loop.rounds)))
    try:  # the engines' final counters (busy_s: bench/round.py's idle shares); never worth failing a finished run
        manifest.put("pools", pool_stats(pools, time.time()))
    except Exception as err:  # noqa: BLE001
        log.warning("engine pool stats not recorded: %s", err)
    return evals
