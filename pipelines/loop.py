"""The RLAIF loop (shared/design.md §1) after ingest:

    caption → questions → eval of the starting policy
    for each round r:  rollout → judge → pairs (+ reference log-probs) → train (+ weight broadcast) → eval

Every stage is recorded in manifest.json with a hash of the config it depends on (pipelines.stages); `--resume`
skips stages that finished with the same hash. Engines are started once; before a stage that generates with the policy, the engines
are brought to the policy that stage expects (after a resume, from the saved round folder).
"""
from __future__ import annotations

import logging
from pathlib import Path

from actors.pool import EnginePool
from actors.weight_sync import broadcast_weights, saved_weights
from rlaif.config import RunConfig
from rlaif.tiny_models import ensure_model

from pipelines.caption import run_caption
from pipelines.evaluate import run_eval
from pipelines.judge import judge_answers
from pipelines.pairs import run_pairs
from pipelines.questions import run_questions
from pipelines.rollout import generate_answers
from pipelines.stages import Stages
from pipelines.train import run_train

log = logging.getLogger(__name__)

# Which config sections each stage's output depends on (a change there redoes the stage and everything after).
DEPENDS = {
    "caption": ("ingest", "models", "caption"),
    "questions": ("ingest", "models", "caption", "questions"),
    "round": ("ingest", "models", "caption", "questions", "rollout", "judge", "pairs", "train", "loop", "seed"),
}


def start_pools(cfg: RunConfig) -> dict[str, EnginePool]:
    pools = {"policy": EnginePool("policy", cfg.models.policy, cfg.pools.policy, video=True, seed=cfg.seed),
             "judge": EnginePool("judge", cfg.models.judge, cfg.pools.judge, video=False, seed=cfg.seed)}
    captioner = cfg.models.captioner or cfg.models.policy
    if cfg.caption.source == "model" and (captioner != cfg.models.policy or cfg.pools.captioner is not None):
        pools["captioner"] = EnginePool("captioner", captioner, cfg.pools.captioner or cfg.pools.policy, video=True,
                                        seed=cfg.seed)
    else:
        pools["captioner"] = pools["policy"]  # captions come before any training: the starting policy writes them
    return pools


def run_loop(cfg: RunConfig, run_dir: Path, stages: Stages) -> list[dict]:
    manifest = stages.manifest
    pools = start_pools(cfg)
    policy, judge = pools["policy"], pools["judge"]
    start_path = ensure_model(cfg.models.policy)
    engines_hold = start_path  # which policy folder the policy engines currently serve

    def serve(path: str) -> None:
        nonlocal engines_hold
        if path != engines_hold:
            # e.g. a resumed run whose training (which broadcasts itself) was skipped
            log.info("policy engines: loading %s", path)
            broadcast_weights(policy.actors, saved_weights(path).items(), cfg.loop.sync_bucket_mb)
            engines_hold = path

    stages.run("caption", DEPENDS["caption"], lambda: run_caption(cfg, run_dir, pools["captioner"]))
    stages.run("questions", DEPENDS["questions"], lambda: run_questions(cfg, run_dir, judge))
    evals = [stages.run("round_base/eval", DEPENDS["round"],
                        lambda: run_eval(cfg, run_dir, run_dir / "round_base", policy, judge, -1))]

    current = start_path
    for r in range(cfg.loop.rounds):
        rd = run_dir / f"round_{r}"
        rd.mkdir(parents=True, exist_ok=True)
        policy_in = current
        reference = start_path if cfg.train.reference == "fixed" else policy_in
        serve(policy_in)
        sampling = {"n": cfg.rollout.samples_per_prompt, "temperature": cfg.rollout.temperature,
                    "top_p": cfg.rollout.top_p, "max_tokens": cfg.rollout.max_tokens}
        stages.run(f"round_{r}/rollout", DEPENDS["round"],
                   lambda: generate_answers(run_dir, policy, "train", sampling, r, rd / "rollouts.parquet"))
        stages.run(f"round_{r}/judge", DEPENDS["round"],
                   lambda: judge_answers(run_dir, judge, cfg.judge, rd / "rollouts.parquet", rd / "judgments.parquet"))
        stages.run(f"round_{r}/pairs", DEPENDS["round"], lambda: run_pairs(cfg, run_dir, rd, r, reference))
        trained = stages.run(f"round_{r}/train", DEPENDS["round"],
                             lambda: run_train(cfg, run_dir, rd, policy_in, policy.actors))
        if not trained.get("skipped") and (rd / "policy").exists():
            current = str(rd / "policy")
            if f"round_{r}/train" in stages.ran_now and trained.get("engines_synced"):
                engines_hold = current  # the trainer broadcast the new weights itself
        serve(current)
        evals.append(stages.run(f"round_{r}/eval", DEPENDS["round"],
                                lambda: run_eval(cfg, run_dir, rd, policy, judge, r)))
    manifest.data["final_policy"] = current
    manifest.record("loop", "done", cfg.hash(*DEPENDS["round"]), rounds=cfg.loop.rounds, final_policy=current)
    for p in {id(p): p for p in pools.values()}.values():
        p.shutdown()
    return evals
