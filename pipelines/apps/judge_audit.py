"""`rlaif judge-audit`: how often does a judge rank a right answer above a wrong one? Run it before spending compute.

    audit.videos synthetic scenes (exact captions; no video is decoded: judges read captions, not frames)
      → one question per kind in audit.kinds, its right answer and audit.wrong_answers wrong ones (rlaif.audit)
      → every judge of audit.judges scores them all through the judge stage's own path (pipelines.stages.judge:
        vLLM judge pool, the policy pool for the policy-as-judge, or the external scoring function)
      → <folder>/candidates.parquet, <folder>/<judge>.parquet, audit.json, audit.md

Each judge is a stage of the folder's manifest: --resume skips the judges already done.
"""
from __future__ import annotations

import copy
import logging
import random

import numpy as np
import pyarrow as pa
import ray.data

from actors.pool import EnginePool
from rlaif.audit import ranking_figures, wrong_answers
from rlaif.config import POLICY_AS_JUDGE, RunConfig, parse_config, set_dotted
from rlaif.layout import AuditLayout
from rlaif.manifest import Manifest
from rlaif.schemas import JUDGMENTS
from rlaif.storage import RunPath
from rlaif.testkit.synthetic_videos import caption_for, make_scene, questions_for
from rlaif.testkit.warm_models import one_per_kind

from pipelines.stages.io import read_table, write_dataset, write_table
from pipelines.orchestration.resume import Stages

log = logging.getLogger(__name__)

AUDIT_DEPENDS = ("audit", "experiment.scene")


def candidates(cfg: RunConfig) -> tuple[pa.Table, pa.Table]:
    """(answers to judge as ROLLOUTS rows plus `right` and `kind`, the judging context: prompt_id, question,
    reference_answer, caption)."""
    a = cfg.audit
    rng = random.Random(a.seed)
    answers, context = [], []
    for i in range(a.videos):
        truth = make_scene(np.random.default_rng([a.seed, i]), **cfg.experiment.scene)
        asked = [q for q in questions_for(truth) if q["kind"] in a.kinds]
        for q in one_per_kind(asked, rng):
            pid = f"audit{i}-{q['kind']}"
            context.append({"prompt_id": pid, "question": q["question"], "reference_answer": q["answer"],
                            "caption": caption_for(truth)})
            for j, (text, right) in enumerate([(q["answer"], True)] + [
                    (w, False) for w in wrong_answers(q["kind"], q["answer"], a.wrong_answers, rng)]):
                answers.append({"prompt_id": pid, "sample_idx": j, "model": "audit", "response": text,
                                "n_tokens": len(text.split()), "finish_reason": "stop", "round": -1,
                                "right": right, "kind": q["kind"]})
    return pa.Table.from_pylist(answers), pa.Table.from_pylist(context)


def judge_config(cfg: RunConfig, overrides: dict) -> RunConfig:
    data = copy.deepcopy(cfg.model_dump(mode="json"))
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return parse_config(data, origin="judge audit")


def judge_pool(cfg: RunConfig) -> EnginePool | None:
    """The engine pool a judge needs (None for a scoring function): the judge LLM's, or the policy's (i-SRT)."""
    if cfg.judge.kind == "function":
        return None
    if cfg.models.judge == POLICY_AS_JUDGE:
        return EnginePool("judge", cfg.models.policy, cfg.pools.policy, video=True, seed=cfg.seed)
    return EnginePool("judge", cfg.models.judge, cfg.pools.judge, video=False, seed=cfg.seed)


def judge_label(cfg: RunConfig) -> str:
    if cfg.judge.kind == "function":
        return cfg.judge.function
    model = cfg.models.policy if cfg.models.judge == POLICY_AS_JUDGE else cfg.models.judge
    return f"{model} ({cfg.judge.kind}{', policy as judge' if cfg.models.judge == POLICY_AS_JUDGE else ''})"


def run_judge(cfg: RunConfig, answers: pa.Table, context: pa.Table, out: RunPath) -> dict:
    from pipelines.stages.judge import judged_dataset

    from actors.progress import expect

    pool = judge_pool(cfg)
    try:
        rollouts = answers.drop(["right", "kind"])
        expect(rollouts.num_rows)  # the console's total for this judge's line
        write_dataset(judged_dataset(ray.data.from_arrow(rollouts), context, pool, cfg.judge), out, JUDGMENTS)
    finally:
        if pool is not None:
            pool.shutdown()
    return {"rows": read_table(out, ["prompt_id"]).num_rows}


def run_judge_audit(cfg: RunConfig, folder: RunPath, resume: bool = False) -> dict:
    """Audits every judge of cfg.audit.judges (the config's own judge when empty); returns audit.json's content."""
    layout = AuditLayout(folder)
    layout.dir.mkdir()
    manifest = Manifest(layout.dir)
    answers, context = candidates(cfg)
    write_table(answers, layout.candidates)
    right = {(r["prompt_id"], r["sample_idx"]): (r["right"], r["kind"])
             for r in answers.select(["prompt_id", "sample_idx", "right", "kind"]).to_pylist()}
    judges = cfg.audit.judges or {"configured": {}}
    results = {}
    for name, overrides in judges.items():
        jcfg = judge_config(cfg, overrides)
        out = layout.judged(name)
        # Each judge's stage is hashed on its own config (the overrides included), and on resume is skipped alone.
        info = Stages(jcfg, manifest, resume).run(f"judge/{name}", (*AUDIT_DEPENDS, "models", "judge", "pools"),
                                                  lambda: run_judge(jcfg, answers, context, out))
        rows = [{"question_id": r["prompt_id"], "kind": right[(r["prompt_id"], r["sample_idx"])][1],
                 "right": right[(r["prompt_id"], r["sample_idx"])][0], "score": r["score"]}
                for r in read_table(out, ["prompt_id", "sample_idx", "score"]).to_pylist()]
        results[name] = {"judge": judge_label(jcfg), "seconds": info.get("seconds"), "by_kind": ranking_figures(rows)}
        log.info("judge audit %s: rank accuracy %s", name,
                 {k: None if f["rank_accuracy"] is None else round(f["rank_accuracy"], 2)
                  for k, f in results[name]["by_kind"].items()})
    audit = {"videos": cfg.audit.videos, "wrong_answers": cfg.audit.wrong_answers, "judges": results}
    layout.figures.write_json(audit)
    layout.table.write_text(audit_markdown(audit) + "\n")
    return audit


def _f(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def audit_markdown(audit: dict) -> str:
    """The audit's tables: rank accuracy per kind, then each judge's scores of right and wrong answers."""
    judges = audit["judges"]
    kinds = sorted({k for j in judges.values() for k in j["by_kind"] if k != "all"}) + ["all"]
    lines = [f"Judge audit: {audit['videos']} synthetic clips, one question per kind, its right answer and "
             f"{audit['wrong_answers']} wrong ones of the same kind, judged against the clip's caption.",
             "Rank accuracy = P[score(right) > score(wrong)] over the pairs of a question (ties count 1/2; 0.50 is "
             "a coin).", "",
             "| judge | " + " | ".join(kinds) + " | ties (all) | s |", "|---|" + "---|" * (len(kinds) + 2)]
    for name, j in judges.items():
        by = j["by_kind"]
        lines.append(f"| {name}: {j['judge']} | " + " | ".join(_f(by.get(k, {}).get("rank_accuracy")) for k in kinds)
                     + f" | {_f(by['all']['ties'])} | {_f(j.get('seconds'), 0)} |")
    lines += ["", "Scores of right and wrong answers (all kinds): mean, and counts of 1/2/3/4/5.", "",
              "| judge | right: mean | right: 1/2/3/4/5 | wrong: mean | wrong: 1/2/3/4/5 | right >= 3 | wrong < 3 |"
              " unscored |", "|---|---|---|---|---|---|---|---|"]
    for name, j in judges.items():
        a = j["by_kind"]["all"]
        lines.append(f"| {name} | {_f(a['mean_right'])} | {'/'.join(map(str, a['hist_right'].values()))} | "
                     f"{_f(a['mean_wrong'])} | {'/'.join(map(str, a['hist_wrong'].values()))} | {_f(a['right_ge3'])} | "
                     f"{_f(a['wrong_lt3'])} | {a['unscored']} |")
    return "\n".join(lines)
