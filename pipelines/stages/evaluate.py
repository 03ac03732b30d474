"""Eval stage: the policy answers the held-out prompts greedily, the judge scores the answers (against the run's
captions, the same evidence every round so rounds compare), figures go to eval.json; with eval.caption_metrics the
policy's captions of the held-out videos are checked against the reference captions too (pipelines.stages.caption_eval)."""
from __future__ import annotations

import logging

from actors.pool import EnginePool
from rlaif.config import RunConfig
from rlaif.metrics import eval_metrics
from rlaif.storage import RunPath

from pipelines.stages.caption_eval import run_caption_eval
from pipelines.stages.io import read_table
from pipelines.stages.judge import answer_and_judge, judge_answers
from pipelines.stages.rollout import generate_answers

log = logging.getLogger(__name__)


def run_eval(cfg: RunConfig, run_dir: RunPath, out_dir: RunPath, policy: EnginePool, judge: EnginePool | None,
             round_idx: int) -> dict:
    out_dir.mkdir()
    sampling = {"n": 1, "temperature": 0.0, "max_tokens": cfg.loop.eval_max_tokens}
    answers, judged = out_dir / "eval_answers.parquet", out_dir / "eval_judgments.parquet"
    if cfg.loop.stream_judge:
        answer_and_judge(run_dir, policy, judge, cfg.judge, "eval", sampling, round_idx, answers, judged)
    else:
        generate_answers(run_dir, policy, "eval", sampling, round_idx, answers)
        judge_answers(run_dir, judge, cfg.judge, answers, judged)
    rows = read_table(judged).to_pylist()
    refs = dict(zip(*read_table(run_dir / "prompts.parquet", ["prompt_id", "reference_answer"]).to_pydict().values()))
    for r in rows:
        r["reference_answer"] = refs.get(r["prompt_id"])
    metrics = {"round": round_idx, **eval_metrics(rows)}
    if cfg.eval.caption_metrics:
        metrics.update(run_caption_eval(cfg, run_dir, out_dir, policy, judge))
    (out_dir / "eval.json").write_json(metrics)
    log.info("eval round %s: %s", round_idx, metrics)
    return metrics
