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

import importlib
import json
import logging
from typing import Callable

import pyarrow as pa
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
from pipelines.stages.frames_join import join_partitions
from pipelines.stages.io import read_dataset, row_count, value_counts, write_dataset, write_table
from pipelines.stages.rollout import prompt_answers, rollout_sampling, split_prompts

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


CONTEXT_COLUMNS = ("question", "reference_answer", "caption")  # what the judge reads beside each answer


def judged_batch(batch: pa.Table, judge: Callable[[list[dict]], tuple[list, list[int]]], model: str,
                 cfg: JudgeConfig) -> pa.Table:
    """A batch of answers (ROLLOUTS rows with their CONTEXT_COLUMNS) as JUDGMENTS rows, each judged against its
    context by `judge` (judge_some)."""
    unmatched = sum(batch.column(c).null_count for c in ("question", "caption"))
    if unmatched:
        raise RuntimeError(f"{unmatched} answers have no prompt or caption to judge against")
    rows = batch.to_pylist()  # bounded: one Ray Data batch
    return pa.Table.from_pylist([judgment_row(r, v, a, model, cfg, s)
                                 for r, (v, a, s) in zip(rows, judge_some(rows, judge))], schema=JUDGMENTS)


class JudgeAnswers(EngineClient):
    """LLM judge (kind score or aspects) through the judge pool."""

    def __init__(self, engines: list, cfg: JudgeConfig, model: str):
        super().__init__(engines)
        self.cfg, self.model = cfg, model
        aspects = cfg.kind == "aspects"
        self.parse = parse_aspects if aspects else parse_judgment
        self.regex = (aspect_output_regex if aspects else judge_output_regex)(cfg.max_tokens) if cfg.structured else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return judged_batch(batch, self.judge, self.model, self.cfg)

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

    def __init__(self, cfg: JudgeConfig):
        module, name = cfg.function.split(":")
        self.scorer = getattr(importlib.import_module(module), name)()
        self.cfg, self.model = cfg, cfg.function

    def __call__(self, batch: pa.Table) -> pa.Table:
        return judged_batch(batch, self.score, self.model, self.cfg)

    def score(self, rows: list[dict]) -> tuple[list, list[int]]:
        scores = self.scorer([r["caption"] for r in rows], [r["question"] for r in rows], [r["response"] for r in rows])
        if len(scores) != len(rows):
            raise RuntimeError(f"{self.model} returned {len(scores)} scores for {len(rows)} answers")
        return [Judgment(min(5.0, max(1.0, float(s))), "", True) for s in scores], [1] * len(rows)


def with_evidence(prompts: ray.data.Dataset, captions: RunPath, rows: int) -> ray.data.Dataset:
    """Prompts (prompt_id, video_id, question, reference_answer; about `rows`) each with its video's caption, by a
    Ray Data join; a prompt whose video has no caption keeps a null one, which judged_batch refuses."""
    evidence = read_dataset(captions, ["video_id", "caption"])
    return prompts.join(evidence, "left_outer", join_partitions(rows), on=("video_id",))


def with_context(answers: ray.data.Dataset, layout: RunLayout, rows: int,
                 captions: RunPath | None = None) -> ray.data.Dataset:
    """Each of the `rows` answers with its question, reference answer and evidence caption (CONTEXT_COLUMNS) by Ray
    Data joins; `captions` defaults to the run's captions.parquet (i-SRT passes the round's re-descriptions). An
    answer without a prompt keeps null context, which judged_batch refuses."""
    prompts = read_dataset(layout.prompts, ["prompt_id", "video_id", "question", "reference_answer"])
    context = with_evidence(prompts, captions or layout.captions, rows).drop_columns(["video_id"])
    return answers.join(context, "left_outer", join_partitions(rows), on=("prompt_id",))


def judged_dataset(answers: ray.data.Dataset, pool: EnginePool | None, cfg: JudgeConfig,
                   scorers: TransientPool | None = None) -> ray.data.Dataset:
    """`answers` (ROLLOUTS rows with their CONTEXT_COLUMNS, a stream or a table) judged: JUDGMENTS rows.
    A scoring function (kind function) runs on the `scorers` actor pool (rlaif.placement.scorer_pool; the default
    pools.scorer if None)."""
    if cfg.kind == "function":
        scorers = scorers or scorer_pool(RunConfig(judge=cfg))
        return answers.map_batches(ScoreAnswers, fn_constructor_kwargs={"cfg": cfg}, batch_size=64,
                                   batch_format="pyarrow", num_cpus=scorers.cpus, num_gpus=scorers.gpus,
                                   compute=ray.data.ActorPoolStrategy(min_size=scorers.min_size,
                                                                      max_size=scorers.max_size))
    return pool.map_batches(answers, JudgeAnswers, cfg=cfg, model=pool.model_path)


def judgment_counts(judgments: RunPath, cfg: JudgeConfig) -> dict:
    """The judge stage's manifest record: rows, and how many of each status, retry and truncation (Ray Data
    aggregates over the three columns: the driver gets the counts)."""
    rows = row_count(judgments)
    columns = ["status", "attempts", "finish_reason"]
    counts = value_counts(read_dataset(judgments, columns), *columns) if rows else {}
    statuses, attempts, reasons = (counts.get(c, {}) for c in columns)
    info = {"rows": rows, "parse_failures": statuses.get(PARSE_FAILED, 0),
            "retried": sum(c for a, c in attempts.items() if a > 1),
            "truncated": reasons.get(TRUNCATED_FINISH, 0),
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
    ds = with_context(read_dataset(answers, ROLLOUTS.names), ctx.layout, n, ctx.evidence)
    write_dataset(judged_dataset(ds, ctx.judge_pool, ctx.cfg.judge, scorer_pool(ctx.cfg)), out, JUDGMENTS)
    return judgment_counts(out, ctx.cfg.judge)


def answer_and_judge(ctx: StageContext, responders: list[EnginePool], split: str, sampling: dict, answers: RunPath,
                     out: RunPath) -> dict:
    """Rollout and judge as one stream (loop.stream_judge): the judge scores each batch of answers as it comes out
    of the policy pool, so the two pools work at the same time instead of one after the other. Each prompt is joined
    to its caption before it is answered and its answers carry that context to the judge (a join between the two
    pools would hold the judge back until the last answer). Writes the same two tables as generate_answers +
    judge_answers (the answers are the judgments' ROLLOUTS columns)."""
    prompts, n = split_prompts(ctx.layout, split)
    ds = prompt_answers(ctx.layout, responders, with_evidence(prompts, ctx.evidence or ctx.layout.captions, n) if n
                        else prompts, sampling, ctx.round, rows=n, carry=CONTEXT_COLUMNS)
    if ds is None:
        write_table(ROLLOUTS.empty_table(), answers)
        write_table(JUDGMENTS.empty_table(), out)
    else:
        write_dataset(judged_dataset(ds, ctx.judge_pool, ctx.cfg.judge, scorer_pool(ctx.cfg)), out, JUDGMENTS)
        write_dataset(read_dataset(out, ROLLOUTS.names), answers, ROLLOUTS, count=False)
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
