"""Eval stage: the policy answers the held-out prompts greedily, the judge scores the answers (against the run's
captions, the same evidence every round so rounds compare), figures go to eval.json; with eval.caption_metrics the
policy's captions of the held-out videos are checked against the reference captions too (pipelines.stages.caption_eval)."""
from __future__ import annotations

import logging

import pyarrow as pa
import ray

from rlaif.metrics import eval_sums, metrics_from_sums

from pipelines.stages.base import StageContext, stage
from pipelines.stages.caption_eval import caption_eval
from pipelines.stages.joins import apply, joined, stored
from pipelines.stages.judge import answer_and_judge, judge_answers
from pipelines.stages.rollout import generate_answers

log = logging.getLogger(__name__)


def table_sums(table: pa.Table) -> dict[str, float]:
    return eval_sums(table.to_pylist())


def batch_sums(batch: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([table_sums(batch)])


def answer_sums(ctx: StageContext) -> dict[str, float]:
    """eval_sums of the round's judged held-out answers, each with its prompt's reference answer: by a task when they
    are few, else batch by batch in Ray Data, where the answers are, and added up here."""
    columns = ["prompt_id", "response", "score", "status", "n_tokens"]
    judged = stored(ctx.out.eval_judgments, columns)
    refs = stored(ctx.layout.prompts, ["prompt_id", "reference_answer"], [("split", "==", "eval")])
    answers = joined(judged, refs, "prompt_id", how="left")
    if answers.small:
        return ray.get(apply.remote(table_sums, answers.table))
    parts = answers.dataset.map_batches(batch_sums, batch_format="pyarrow", batch_size=None).take_all()
    return {k: sum(p[k] for p in parts) for k in parts[0]} if parts else eval_sums([])


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
    metrics = {"round": ctx.round, **metrics_from_sums(answer_sums(ctx))}
    if cfg.eval.caption_metrics:
        metrics.update(caption_eval(ctx))
    out.eval.write_json(metrics)
    log.info("eval round %s: %s", ctx.round, metrics)
    return metrics
