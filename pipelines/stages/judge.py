"""Judge stage: every answer gets a score 1–5 with its video's caption as the evidence (judge.kind):

- `score` (LLaVA-Hound-DPO): the judge pool writes a short explanation and `Score: N`;
- `aspects` (VLM-RLAIF's context-aware judge): accurate / helpful / natural / concise, each 1–5, averaged;
- `function` (MMAIP-V's external scorer): a scoring function, no LLM, run in a Ray Data actor.

LLM replies are constrained by vLLM structured outputs when enabled; whatever still does not parse is re-asked with a
new seed up to `retries` times, and then kept with parse_ok=false and no score (counted, never guessed). A length
penalty (judge.length_penalty) is taken off the judge's score last; `raw_score` keeps the judge's own.

Every judgment says what happened in `status` (rlaif.judging): an empty answer is not sent to the judge and gets the
lowest score by rule; an answer the policy engine refused to write (prompt over its context length), or a judging
prompt the judge refused, gets no score; so does a prompt that killed its engine every time it was sent
(`engine_crashed` for the answering engine, `judge_crashed` for the judge: actors.pool.EngineClient). Truncated
("endless") answers are judged and counted; pairs never choose them. The stage's manifest record counts each.
"""
from __future__ import annotations

import collections
import importlib
import json
import logging
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from actors.pool import EngineClient, EnginePool
from actors.progress import expect
from rlaif.config import JudgeConfig, RunConfig
from rlaif.judging import (EMPTY_ANSWER, EMPTY_ANSWER_SCORE, JUDGE_CRASHED, JUDGE_REFUSED, PARSE_FAILED, SCORED,
                           Judgment, length_penalised, parse_aspects, parse_judgment, unjudgeable)
from rlaif.prompts import aspect_output_regex, judge_messages, judge_output_regex
from rlaif.schemas import ENGINE_CRASHED, JUDGMENTS, ROLLOUTS, TRUNCATED_FINISH
from rlaif.layout import RunLayout
from rlaif.placement import TransientPool, scorer_pool
from rlaif.seeding import seeded
from rlaif.storage import RunPath

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import read_dataset, row_count, scan, write_dataset, write_table
from pipelines.stages.joins import attach, copy_table, joined, stored
from pipelines.stages.rollout import answers_dataset, rollout_sampling

log = logging.getLogger(__name__)


def judgment_row(row: dict, verdict: Judgment | None, attempts: int, judge_model: str, cfg: JudgeConfig,
                 status: str) -> dict:
    """`verdict` is the judge's (None when it was not asked or refused); `status` says which (rlaif.judging)."""
    if status == EMPTY_ANSWER:
        verdict = Judgment(EMPTY_ANSWER_SCORE, "empty answer: lowest score by rule, the judge was not asked", False)
    verdict = verdict or Judgment(None, "", False)
    score = verdict.score
    if score is not None and cfg.length_penalty:
        score = length_penalised(score, row["n_tokens"], cfg.length_penalty, cfg.length_budget)
    return {**{k: row[k] for k in ROLLOUTS.names}, "score": score, "raw_score": verdict.score,
            "aspects": json.dumps(verdict.aspects) if verdict.aspects else None, "explanation": verdict.explanation,
            "parse_ok": verdict.parse_ok, "attempts": attempts, "judge_model": judge_model, "status": status}


def judge_some(rows: list[dict], judge: Callable[[list[dict]], tuple[list, list[int]]]) -> list[tuple]:
    """(verdict, attempts, status) per row: unjudgeable rows are settled here, the others go to `judge` (which
    returns verdicts, None for a refused request or the status of one it gave up on (JUDGE_CRASHED), and attempts),
    each distinct (prompt_id, response) once."""
    out: list[tuple] = [(None, 0, unjudgeable(r["response"], r["finish_reason"])) for r in rows]
    # One request per distinct answer to a question: a policy often samples the same short answer several times,
    # and the judge (greedy by default) would only repeat its verdict.
    keys = [(r["prompt_id"], r["response"]) for r in rows]
    first: dict[tuple, int] = {}
    for i, (_, _, status) in enumerate(out):
        if status is None:
            first.setdefault(keys[i], i)
    if first:
        ask = list(first.values())
        verdicts, attempts = judge([rows[i] for i in ask])
        settled = {i: (None, a, v) if isinstance(v, str) else
                   (v, a, JUDGE_REFUSED if v is None else SCORED if v.parse_ok else PARSE_FAILED)
                   for i, v, a in zip(ask, verdicts, attempts)}
        for i, (_, _, status) in enumerate(out):
            if status is None:
                out[i] = settled[first[keys[i]]]
    return out


def judged_batch(batch: pa.Table, context: pa.Table | None, judge: Callable[[list[dict]], tuple[list, list[int]]],
                 model: str, cfg: JudgeConfig) -> pa.Table:
    """A batch of answers (ROLLOUTS) as JUDGMENTS rows, each judged against its context by `judge` (judge_some): the
    batch's own JUDGE_CONTEXT columns, or `context`'s by prompt_id."""
    rows = with_context(batch, context).to_pylist()
    return pa.Table.from_pylist([judgment_row(r, v, a, model, cfg, s)
                                 for r, (v, a, s) in zip(rows, judge_some(rows, judge))], schema=JUDGMENTS)


class JudgeAnswers(EngineClient):
    """LLM judge (kind score or aspects) through the judge pool."""

    def __init__(self, engines: list, cfg: JudgeConfig, model: str, context: pa.Table | None = None):
        super().__init__(engines)
        self.cfg, self.model, self.context = cfg, model, context
        aspects = cfg.kind == "aspects"
        self.parse = parse_aspects if aspects else parse_judgment
        self.regex = (aspect_output_regex if aspects else judge_output_regex)(cfg.max_tokens) if cfg.structured else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return judged_batch(batch, self.context, self.judge, self.model, self.cfg)

    def judge(self, rows: list[dict]) -> tuple[list, list[int]]:
        requests = [{"messages": judge_messages(r["caption"], r["question"], r["response"],
                                                r["reference_answer"] if self.cfg.use_reference_answer else None,
                                                aspects=self.cfg.kind == "aspects")}
                    for r in rows]
        sampling = {"max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        if self.regex:
            sampling["regex"] = self.regex
        samplings = [seeded(sampling, r["prompt_id"], r["sample_idx"], r["round"], r["model"], "judge") for r in rows]
        refused: dict[int, str] = {}
        verdicts, attempts = self.call_parsed(requests, samplings, self.parse, lambda v: v.parse_ok, self.cfg.retries,
                                              refused)
        return [JUDGE_CRASHED if refused.get(i) == ENGINE_CRASHED else v for i, v in enumerate(verdicts)], attempts


class ScoreAnswers:
    """External scoring function (kind function), built once per Ray Data actor."""

    def __init__(self, cfg: JudgeConfig, context: pa.Table | None = None):
        module, name = cfg.function.split(":")
        self.scorer = getattr(importlib.import_module(module), name)()
        self.cfg, self.model, self.context = cfg, cfg.function, context

    def __call__(self, batch: pa.Table) -> pa.Table:
        return judged_batch(batch, self.context, self.score, self.model, self.cfg)

    def score(self, rows: list[dict]) -> tuple[list, list[int]]:
        scores = self.scorer([r["caption"] for r in rows], [r["question"] for r in rows], [r["response"] for r in rows])
        if len(scores) != len(rows):
            raise RuntimeError(f"{self.model} returned {len(scores)} scores for {len(rows)} answers")
        return [Judgment(min(5.0, max(1.0, float(s))), "", True) for s in scores], [1] * len(rows)


def with_judging_context(answers: ray.data.Dataset, rows: int, layout: RunLayout,
                         captions: RunPath | None = None) -> ray.data.Dataset:
    """A stream of `rows` answers with their JUDGE_CONTEXT columns (pipelines.stages.joins), from the prompts and
    the captions (`captions`, default the run's)."""
    prompts = stored(layout.prompts, ["prompt_id", "video_id", "question", "reference_answer"])
    context = joined(prompts, stored(captions or layout.captions, ["video_id", "caption"]), "video_id", how="left")
    # A left join: an answer without a prompt or caption is reported by the judge (with_context), not dropped.
    return attach(answers, context, "prompt_id", rows, how="left").drop_columns(["video_id"])


def with_context(batch: pa.Table, context: pa.Table | None) -> pa.Table:
    """Each answer with its question, reference and caption: its own columns (`context` None: joined upstream), or
    `context`'s by prompt_id, joined inside the judging actor (a batch-size-less Ray Data stage there would gather
    the whole stream first). Raises when an answer has no prompt or caption to judge against."""
    joined = batch if context is None else batch.join(context, "prompt_id")
    missing = batch.num_rows - joined.num_rows + (joined.column("caption").null_count if joined.num_rows else 0)
    if missing:
        raise RuntimeError(f"{missing} answers have no prompt or caption to judge against")
    return joined


def judged_dataset(answers: ray.data.Dataset, context: pa.Table | None, pool: EnginePool | None,
                   cfg: JudgeConfig, scorers: TransientPool | None = None) -> ray.data.Dataset:
    """`answers` (a stream of ROLLOUTS rows) judged against their context: their own JUDGE_CONTEXT columns (`context`
    None) or `context`'s (a caller's small table of JUDGE_CONTEXT by prompt_id: the judge audit's), as JUDGMENTS
    rows.
    A scoring function (kind function) runs on the `scorers` actor pool (rlaif.placement.scorer_pool; the default
    pools.scorer if None)."""
    if cfg.kind == "function":
        scorers = scorers or scorer_pool(RunConfig(judge=cfg))
        return answers.map_batches(ScoreAnswers, fn_constructor_kwargs={"cfg": cfg, "context": context}, batch_size=64,
                                   batch_format="pyarrow", num_cpus=scorers.cpus, num_gpus=scorers.gpus,
                                   compute=ray.data.ActorPoolStrategy(min_size=scorers.min_size,
                                                                      max_size=scorers.max_size))
    return pool.map_batches(answers, JudgeAnswers, cfg=cfg, model=pool.model_path, context=context)


def judgment_counts(judgments: RunPath, cfg: JudgeConfig) -> dict:
    """The judge stage's manifest record: rows, and how many of each status, retry and truncation (the driver scans
    the three columns batch by batch)."""
    statuses: collections.Counter = collections.Counter()
    rows = retried = truncated = 0
    for batch in scan(judgments, ["status", "attempts", "finish_reason"]):
        rows += batch.num_rows
        statuses.update(batch.column("status").to_pylist())
        retried += pc.sum(pc.greater(batch.column("attempts"), 1)).as_py() or 0
        truncated += pc.sum(pc.equal(batch.column("finish_reason"), TRUNCATED_FINISH)).as_py() or 0
    info = {"rows": rows, "parse_failures": statuses[PARSE_FAILED], "retried": retried, "truncated": truncated,
            "statuses": dict(sorted(statuses.items()))}
    log.info("judged %d answers (%s): %s", rows, cfg.kind, info)
    return info


def judge_answers(ctx: StageContext, answers: RunPath, out: RunPath) -> dict:
    """The answers saved in `answers` judged by the judge pool against ctx.evidence (the run's captions if None)."""
    n = row_count(answers)
    if n == 0:
        write_table(JUDGMENTS.empty_table(), out)
        return judgment_counts(out, ctx.cfg.judge)
    expect(n)
    answered = with_judging_context(read_dataset(answers, ROLLOUTS.names), n, ctx.layout, ctx.evidence)
    write_dataset(judged_dataset(answered, None, ctx.judge_pool, ctx.cfg.judge, scorer_pool(ctx.cfg)), out, JUDGMENTS)
    return judgment_counts(out, ctx.cfg.judge)


def answer_and_judge(ctx: StageContext, responders: list[EnginePool], split: str, sampling: dict, answers: RunPath,
                     out: RunPath) -> dict:
    """Rollout and judge as one stream (loop.stream_judge): the judge scores each batch of answers as it comes out
    of the policy pool, so the two pools work at the same time instead of one after the other; the answers carry
    their judging context from the rollout on. Writes the same two tables as generate_answers + judge_answers (the
    answers are the judgments' ROLLOUTS columns, pipelines.stages.joins.copy_table)."""
    ds = answers_dataset(ctx.layout, responders, split, sampling, ctx.round, evidence=ctx.evidence or ctx.layout.captions)
    if ds is None:
        write_table(ROLLOUTS.empty_table(), answers)
        write_table(JUDGMENTS.empty_table(), out)
    else:
        write_dataset(judged_dataset(ds, None, ctx.judge_pool, ctx.cfg.judge, scorer_pool(ctx.cfg)), out, JUDGMENTS)
        copy_table(out, answers, ROLLOUTS)
    return judgment_counts(out, ctx.cfg.judge)


@stage("judge")
def judge(ctx: StageContext) -> dict:
    """round_<r>/rollouts.parquet judged into round_<r>/judgments.parquet (loop.stream_judge false)."""
    return judge_answers(ctx, ctx.out.rollouts, ctx.out.judgments)


@stage("rollout", "models.extra_responders", "judge")
def rollout_judge(ctx: StageContext) -> dict:
    """The rollout stage and the judge stage as one stream (loop.stream_judge): round_<r>/rollouts.parquet and
    round_<r>/judgments.parquet."""
    return answer_and_judge(ctx, ctx.responders, "train", rollout_sampling(ctx.cfg), ctx.out.rollouts,
                            ctx.out.judgments)
