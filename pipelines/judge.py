"""Judge stage: every answer gets a score 1–5 with its video's caption as the evidence (judge.kind):

- `score` (LLaVA-Hound-DPO): the judge pool writes a short explanation and `Score: N`;
- `aspects` (VLM-RLAIF's context-aware judge): accurate / helpful / natural / concise, each 1–5, averaged;
- `function` (MMAIP-V's external scorer): a scoring function, no LLM, run in a Ray Data actor.

LLM replies are constrained by vLLM structured outputs when enabled; whatever still does not parse is re-asked with a
new seed up to `retries` times, and then kept with parse_ok=false and no score (counted, never guessed). A length
penalty (judge.length_penalty) is taken off the judge's score last; `raw_score` keeps the judge's own.
"""
from __future__ import annotations

import importlib
import json
import logging

import pyarrow as pa
import ray.data

from actors.pool import EngineClient, EnginePool
from rlaif.config import JudgeConfig
from rlaif.judging import Judgment, length_penalised, parse_aspects, parse_judgment
from rlaif.prompts import aspect_output_regex, judge_messages, judge_output_regex
from rlaif.schemas import JUDGMENTS, ROLLOUTS
from rlaif.storage import RunPath

from pipelines.io import read_table, write_dataset, write_table

log = logging.getLogger(__name__)


def judgment_row(row: dict, verdict: Judgment, attempts: int, judge_model: str, cfg: JudgeConfig) -> dict:
    score = verdict.score
    if score is not None and cfg.length_penalty:
        score = length_penalised(score, row["n_tokens"], cfg.length_penalty, cfg.length_budget)
    return {**{k: row[k] for k in ROLLOUTS.names}, "score": score, "raw_score": verdict.score,
            "aspects": json.dumps(verdict.aspects) if verdict.aspects else None, "explanation": verdict.explanation,
            "parse_ok": verdict.parse_ok, "attempts": attempts, "judge_model": judge_model}


class JudgeAnswers(EngineClient):
    """LLM judge (kind score or aspects) through the judge pool."""

    def __init__(self, engines: list, cfg: JudgeConfig, model: str):
        super().__init__(engines)
        self.cfg, self.model = cfg, model
        aspects = cfg.kind == "aspects"
        self.parse = parse_aspects if aspects else parse_judgment
        self.regex = (aspect_output_regex if aspects else judge_output_regex)(cfg.max_tokens) if cfg.structured else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [{"messages": judge_messages(r["caption"], r["question"], r["response"],
                                                r["reference_answer"] if self.cfg.use_reference_answer else None,
                                                aspects=self.cfg.kind == "aspects")}
                    for r in rows]
        sampling = {"max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        if self.regex:
            sampling["regex"] = self.regex
        verdicts, attempts = self.call_parsed(requests, sampling, self.parse, lambda v: v.parse_ok, self.cfg.retries)
        return pa.Table.from_pylist([judgment_row(r, v, a, self.model, self.cfg)
                                     for r, v, a in zip(rows, verdicts, attempts)], schema=JUDGMENTS)


class ScoreAnswers:
    """External scoring function (kind function), built once per Ray Data actor."""

    def __init__(self, cfg: JudgeConfig):
        module, name = cfg.function.split(":")
        self.scorer = getattr(importlib.import_module(module), name)()
        self.cfg, self.model = cfg, cfg.function

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        scores = self.scorer([r["caption"] for r in rows], [r["question"] for r in rows], [r["response"] for r in rows])
        if len(scores) != len(rows):
            raise RuntimeError(f"{self.model} returned {len(scores)} scores for {len(rows)} answers")
        verdicts = [Judgment(min(5.0, max(1.0, float(s))), "", True) for s in scores]
        return pa.Table.from_pylist([judgment_row(r, v, 1, self.model, self.cfg) for r, v in zip(rows, verdicts)],
                                    schema=JUDGMENTS)


def judge_answers(run_dir: RunPath, pool: EnginePool | None, cfg: JudgeConfig, answers: RunPath, out: RunPath,
                  captions: RunPath | None = None) -> dict:
    """Joins answers with their question and evidence caption (small text tables, in the driver) and judges them.
    `captions` defaults to the run's captions.parquet (i-SRT passes the round's re-descriptions)."""
    rollouts = read_table(answers)
    prompts = read_table(run_dir / "prompts.parquet", ["prompt_id", "video_id", "question", "reference_answer"])
    evidence = read_table(captions or run_dir / "captions.parquet", ["video_id", "caption"])
    if rollouts.num_rows == 0:
        write_table(JUDGMENTS.empty_table(), out)
        return {"rows": 0, "parse_failures": 0, "retried": 0}
    table = rollouts.join(prompts, "prompt_id").join(evidence, "video_id")
    if table.num_rows != rollouts.num_rows:
        raise RuntimeError(f"{rollouts.num_rows - table.num_rows} answers have no prompt or caption to judge against")
    ds = ray.data.from_arrow(table)
    if cfg.kind == "function":
        ds = ds.map_batches(ScoreAnswers, fn_constructor_kwargs={"cfg": cfg}, batch_size=64, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    else:
        ds = ds.map_batches(
            JudgeAnswers, fn_constructor_kwargs={"engines": pool.actors, "cfg": cfg, "model": pool.model_path},
            batch_size=pool.cfg.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=len(pool.actors)), num_cpus=0.1)
    write_dataset(ds, out, JUDGMENTS)
    judged = read_table(out, ["parse_ok", "attempts"]).to_pylist()
    failures = sum(not r["parse_ok"] for r in judged)
    retried = sum(r["attempts"] > 1 for r in judged)
    log.info("judged %d answers (%s): %d parse failures after retries, %d needed a retry", len(judged), cfg.kind,
             failures, retried)
    return {"rows": len(judged), "parse_failures": failures, "retried": retried}
