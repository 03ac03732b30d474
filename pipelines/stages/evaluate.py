"""Eval stage: the policy answers the held-out prompts greedily, the judge scores the answers (against the run's
captions, the same evidence every round so rounds compare), figures go to eval.json; with eval.caption_metrics the
policy's captions of the held-out videos are checked against the reference captions too (pipelines.stages.caption_eval)."""
from __future__ import annotations

import logging

from rlaif.metrics import eval_metrics

from pipelines.stages.base import StageContext, stage
from pipelines.stages.caption_eval import caption_eval
from pipelines.stages.io import read_table
from pipelines.stages.judge import answer_and_judge, judge_answers
from pipelines.stages.rollout import generate_answers

log = logging.getLogger(__name__)


@stage("loop.eval_max_tokens", "loop.stream_judge", "judge", "eval")
def evaluate(ctx: StageContext) -> dict:
    """The policy's greedy answers to the held-out questions, judged against the run's captions (the same evidence
    every round, so rounds compare), and the round's eval.json."""
    cfg, out = ctx.cfg, ctx.out
    ctx = ctx.at(evidence=None)
    out.dir.mkdir()
    sampling = {"n": 1, "temperature": 0.0, "max_tokens": cfg.loop.eval_max_tokens}
    if cfg.loop.stream_judge:
        answer_and_judge(ctx, [ctx.policy_pool], "eval", sampling, out.eval_answers, out.eval_judgments)
    else:
        generate_answers(ctx.layout, ctx.policy_pool, "eval", sampling, ctx.round, out.eval_answers)
        judge_answers(ctx, out.eval_answers, out.eval_judgments)
    rows = read_table(out.eval_judgments).to_pylist()
    refs = dict(zip(*read_table(ctx.layout.prompts, ["prompt_id", "reference_answer"]).to_pydict().values()))
    for r in rows:
        r["reference_answer"] = refs.get(r["prompt_id"])
    metrics = {"round": ctx.round, **eval_metrics(rows)}
    if cfg.eval.caption_metrics:
        metrics.update(caption_eval(ctx))
    out.eval.write_json(metrics)
    log.info("eval round %s: %s", ctx.round, metrics)
    return metrics
