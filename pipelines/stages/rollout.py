"""Rollout stage: the policy pool (current weights) answers every prompt K times, with the video in view; with
models.extra_responders (MMAIP-V's response set) every other pool answers K times too, in the same table (the
`model` column says who answered)."""
from __future__ import annotations

import logging

import pyarrow as pa
import ray.data

from actors.pool import EngineClient, EnginePool
from actors.progress import expect
from rlaif.config import RunConfig
from rlaif.layout import RunLayout
from rlaif.prompts import video_question_messages
from rlaif.schemas import REFUSED_FINISH, ROLLOUTS, frames_fps, frames_of
from rlaif.seeding import seeded
from rlaif.storage import RunPath

from pipelines.stages.base import StageContext, stage
from pipelines.stages.frames_join import rows_with_frames
from pipelines.stages.io import read_dataset, row_count, value_counts, write_dataset, write_table

log = logging.getLogger(__name__)


class AnswerPrompts(EngineClient):
    def __init__(self, engines: list, sampling: dict, model: str, round_idx: int, sample_offset: int = 0,
                 carry: tuple[str, ...] = ()):
        super().__init__(engines)
        self.sampling, self.model, self.round_idx = sampling, model, round_idx
        self.sample_offset = sample_offset  # keeps (prompt_id, sample_idx) unique across the pools of one rollout
        self.carry = carry  # prompt columns each answer keeps (the judge's context, for a judge down the stream)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()  # bounded: one Ray Data batch
        requests = [{"messages": video_question_messages(r["question"]), "frames": frames_of(r), "fps": frames_fps(r)}
                    for r in rows]
        samplings = [seeded(self.sampling, r["prompt_id"], self.round_idx, self.sample_offset, "answer") for r in rows]
        outs = self.call(requests, samplings)
        schema = pa.schema(list(ROLLOUTS) + [batch.schema.field(c) for c in self.carry])
        return pa.Table.from_pylist(
            [{"prompt_id": r["prompt_id"], "sample_idx": self.sample_offset + k, "model": self.model, "response": s["text"].strip(),
              "n_tokens": s["n_tokens"], "finish_reason": s["finish_reason"], "round": self.round_idx,
              **{c: r[c] for c in self.carry}}
             for r, samples in zip(rows, outs) for k, s in enumerate(samples)], schema=schema)


def rollout_sampling(cfg: RunConfig) -> dict:
    return {"n": cfg.rollout.samples_per_prompt, "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
            "max_tokens": cfg.rollout.max_tokens}


PROMPT_COLUMNS = ["prompt_id", "video_id", "question", "reference_answer"]


def split_prompts(layout: RunLayout, split: str) -> tuple[ray.data.Dataset, int]:
    """The prompts of `split` (PROMPT_COLUMNS) as a Ray Data stream, and how many there are (counted by Ray Data
    over the split column alone)."""
    where = f"split == {split!r}"
    n = read_dataset(layout.prompts, ["split"]).filter(expr=where).count() if row_count(layout.prompts) else 0
    return read_dataset(layout.prompts, PROMPT_COLUMNS + ["split"]).filter(expr=where).drop_columns(["split"]), n


def answers_dataset(layout: RunLayout, pools: EnginePool | list[EnginePool], split: str, sampling: dict,
                    round_idx: int) -> ray.data.Dataset | None:
    """Every prompt of `split` answered `sampling['n']` times by each pool, as a stream of ROLLOUTS batches (None when
    the split has no prompts)."""
    prompts, n = split_prompts(layout, split)
    return prompt_answers(layout, pools, prompts, sampling, round_idx, rows=n)


def prompt_answers(layout: RunLayout, pools: EnginePool | list[EnginePool], prompts: ray.data.Dataset | pa.Table,
                   sampling: dict, round_idx: int, rows: int | None = None,
                   carry: tuple[str, ...] = ()) -> ray.data.Dataset | None:
    """answers_dataset for any prompts (prompt_id, video_id, question; a Dataset of `rows` rows, or a small table)
    of the run's ingested videos. Each answer keeps the prompt's `carry` columns beside its ROLLOUTS columns."""
    pools = pools if isinstance(pools, list) else [pools]
    if isinstance(prompts, pa.Table):  # a caller's own few prompts (the experiment's gate)
        prompts, rows = ray.data.from_arrow(prompts.select(["prompt_id", "video_id", "question"])), prompts.num_rows
    if not rows:
        return None
    expect(rows * sampling["n"] * len(pools))
    with_frames = rows_with_frames(layout.videos, prompts, rows)
    # Blocks of one engine batch each: an answered batch then goes on downstream (to the judge) at once, instead of
    # waiting in its task's output block for the rest of the block's batches.
    parts = [pool.map_batches(with_frames.repartition(target_num_rows_per_block=pool.cfg.batch_size), AnswerPrompts,
                              sampling=sampling, model=pool.model_path, round_idx=round_idx,
                              sample_offset=i * sampling["n"], carry=carry) for i, pool in enumerate(pools)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def finish_reasons(path: RunPath) -> dict[str, int]:
    """How many answers of a stored ROLLOUTS (or JUDGMENTS) table ended with each finish_reason (a Ray Data
    aggregate: the driver gets the counts)."""
    return value_counts(read_dataset(path, ["finish_reason"]), "finish_reason")["finish_reason"] if row_count(path) else {}


def generate_answers(layout: RunLayout, pools: EnginePool | list[EnginePool], split: str, sampling: dict,
                     round_idx: int, out: RunPath) -> int:
    """answers_dataset written to `out`; returns the number of answers."""
    ds = answers_dataset(layout, pools, split, sampling, round_idx)
    if ds is None:
        write_table(ROLLOUTS.empty_table(), out)
        return 0
    write_dataset(ds, out, ROLLOUTS)
    return row_count(out)


@stage("rollout", "models.extra_responders")
def rollout(ctx: StageContext) -> dict:
    """The round's answers (K per training question, from every responder) into round_<r>/rollouts.parquet
    (loop.stream_judge false; else pipelines.stages.judge.rollout_judge does rollout and judging as one stream).
    The manifest record counts the rows without an answer by finish_reason (refused, engine_crashed)."""
    n = generate_answers(ctx.layout, ctx.responders, "train", rollout_sampling(ctx.cfg), ctx.round, ctx.out.rollouts)
    unanswered = {r: k for r, k in finish_reasons(ctx.out.rollouts).items() if r in REFUSED_FINISH}
    return {"rows": n, "unanswered": dict(sorted(unanswered.items()))}
