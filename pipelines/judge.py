"""Judge stage: the judge pool scores every answer 1–5 with the video's caption as evidence (LLaVA-Hound form).

Replies are constrained by vLLM structured outputs when enabled; whatever still does not parse is re-asked with a
new seed up to `retries` times, and then kept with parse_ok=false and no score (counted, never guessed).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import ray.data

from actors.pool import EngineClient, EnginePool
from rlaif.config import JudgeConfig
from rlaif.judging import parse_judgment
from rlaif.prompts import judge_messages, judge_output_regex
from rlaif.schemas import JUDGMENTS, ROLLOUTS

from pipelines.io import read_table, write_dataset, write_table

log = logging.getLogger(__name__)


class JudgeAnswers(EngineClient):
    def __init__(self, engines: list, cfg: JudgeConfig, model: str):
        super().__init__(engines)
        self.cfg, self.model = cfg, model

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [{"messages": judge_messages(r["caption"], r["question"], r["response"],
                                                r["reference_answer"] if self.cfg.use_reference_answer else None)}
                    for r in rows]
        verdicts = [None] * len(rows)
        attempts = [0] * len(rows)
        todo = list(range(len(rows)))
        for attempt in range(self.cfg.retries + 1):
            # A retry samples (temperature > 0) so that it can come out differently.
            sampling = {"n": 1, "max_tokens": self.cfg.max_tokens,
                        "temperature": self.cfg.temperature if attempt == 0 else max(self.cfg.temperature, 0.7)}
            if self.cfg.structured:
                sampling["regex"] = judge_output_regex(self.cfg.max_tokens)
            outs = self.call([requests[i] for i in todo], sampling)
            for i, out in zip(todo, outs):
                verdicts[i] = parse_judgment(out[0]["text"])
                attempts[i] = attempt + 1
            todo = [i for i in todo if not verdicts[i].parse_ok]
            if not todo:
                break
        return pa.Table.from_pylist(
            [{**{k: r[k] for k in ROLLOUTS.names}, "score": v.score, "explanation": v.explanation,
              "parse_ok": v.parse_ok, "attempts": a, "judge_model": self.model}
             for r, v, a in zip(rows, verdicts, attempts)], schema=JUDGMENTS)


def judge_answers(run_dir: Path, pool: EnginePool, cfg: JudgeConfig, answers: Path, out: Path) -> dict:
    """Joins answers with their question and caption (small text tables, in the driver) and judges them."""
    rollouts = read_table(answers)
    prompts = read_table(run_dir / "prompts.parquet", ["prompt_id", "video_id", "question", "reference_answer"])
    captions = read_table(run_dir / "captions.parquet", ["video_id", "caption"])
    if rollouts.num_rows == 0:
        write_table(JUDGMENTS.empty_table(), out)
        return {"rows": 0, "parse_failures": 0, "retried": 0}
    table = rollouts.join(prompts, "prompt_id").join(captions, "video_id")
    if table.num_rows != rollouts.num_rows:
        raise RuntimeError(f"{rollouts.num_rows - table.num_rows} answers have no prompt or caption to judge against")
    ds = ray.data.from_arrow(table).map_batches(
        JudgeAnswers, fn_constructor_kwargs={"engines": pool.actors, "cfg": cfg, "model": pool.model_path},
        batch_size=pool.cfg.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=len(pool.actors)), num_cpus=0.1)
    write_dataset(ds, out, JUDGMENTS)
    judged = read_table(out, ["parse_ok", "attempts"]).to_pylist()
    failures = sum(not r["parse_ok"] for r in judged)
    retried = sum(r["attempts"] > 1 for r in judged)
    log.info("judged %d answers: %d parse failures after retries, %d needed a retry", len(judged), failures, retried)
    return {"rows": len(judged), "parse_failures": failures, "retried": retried}
