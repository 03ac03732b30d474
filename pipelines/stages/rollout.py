"""Rollout stage: the policy pool (current weights) answers every prompt K times, with the video in view; with
models.extra_responders (MMAIP-V's response set) every other pool answers K times too, in the same table (the
`model` column says who answered)."""
from __future__ import annotations

import collections
import logging

import pyarrow as pa
import pyarrow.compute as pc
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
from pipelines.stages.io import read_table, write_dataset, write_table

log = logging.getLogger(__name__)


class AnswerPrompts(EngineClient):
    def __init__(self, engines: list, sampling: dict, model: str, round_idx: int, sample_offset: int = 0):
        super().__init__(engines)
        self.sampling, self.model, self.round_idx = sampling, model, round_idx
        self.sample_offset = sample_offset  # keeps (prompt_id, sample_idx) unique across the pools of one rollout

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [{"messages": video_question_messages(r["question"]), "frames": frames_of(r), "fps": frames_fps(r)}
                    for r in rows]
        samplings = [seeded(self.sampling, r["prompt_id"], self.round_idx, self.sample_offset, "answer") for r in rows]
        outs = self.call(requests, samplings)
        return pa.Table.from_pylist(
            [{"prompt_id": r["prompt_id"], "sample_idx": self.sample_offset + k, "model": self.model, "response": s["text"].strip(),
              "n_tokens": s["n_tokens"], "finish_reason": s["finish_reason"], "round": self.round_idx}
             for r, samples in zip(rows, outs) for k, s in enumerate(samples)], schema=ROLLOUTS)


def rollout_sampling(cfg: RunConfig) -> dict:
    return {"n": cfg.rollout.samples_per_prompt, "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
            "max_tokens": cfg.rollout.max_tokens}


def answers_dataset(layout: RunLayout, pools: EnginePool | list[EnginePool], split: str, sampling: dict,
                    round_idx: int) -> ray.data.Dataset | None:
    """Every prompt of `split` answered `sampling['n']` times by each pool, as a stream of ROLLOUTS batches (None when
    the split has no prompts): a following stage (the judge) can consume answers while later ones are generated."""
    prompts = read_table(layout.prompts)
    prompts = prompts.filter(pc.equal(prompts.column("split"), split))
    return prompt_answers(layout, pools, prompts, sampling, round_idx)


def prompt_answers(layout: RunLayout, pools: EnginePool | list[EnginePool], prompts: pa.Table, sampling: dict,
                   round_idx: int) -> ray.data.Dataset | None:
    """answers_dataset for any prompts (prompt_id, video_id, question) of the run's ingested videos."""
    pools = pools if isinstance(pools, list) else [pools]
    prompts = prompts.select(["prompt_id", "video_id", "question"])
    if prompts.num_rows == 0:
        return None
    expect(prompts.num_rows * sampling["n"] * len(pools))
    # Blocks of one engine batch each: an answered batch then goes on downstream (to the judge) at once, instead of
    # waiting in its task's output block for the rest of the block's batches.
    parts = [pool.map_batches(rows_with_frames(layout.videos, prompts).repartition(
        target_num_rows_per_block=pool.cfg.batch_size), AnswerPrompts, sampling=sampling, model=pool.model_path,
        round_idx=round_idx, sample_offset=i * sampling["n"]) for i, pool in enumerate(pools)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def generate_answers(layout: RunLayout, pools: EnginePool | list[EnginePool], split: str, sampling: dict,
                     round_idx: int, out: RunPath) -> int:
    """answers_dataset written to `out`; returns the number of answers."""
    ds = answers_dataset(layout, pools, split, sampling, round_idx)
    if ds is None:
        write_table(ROLLOUTS.empty_table(), out)
        return 0
    write_dataset(ds, out, ROLLOUTS)
    return read_table(out, ["prompt_id"]).num_rows


@stage("rollout", "models.extra_responders")
def rollout(ctx: StageContext) -> dict:
    """The round's answers (K per training question, from every responder) into round_<r>/rollouts.parquet
    (loop.stream_judge false; else pipelines.stages.judge.rollout_judge does rollout and judging as one stream).
    The manifest record counts the rows without an answer by finish_reason (refused, engine_crashed)."""
    n = generate_answers(ctx.layout, ctx.responders, "train", rollout_sampling(ctx.cfg), ctx.round, ctx.out.rollouts)
    reasons = read_table(ctx.out.rollouts, ["finish_reason"]).column("finish_reason").to_pylist()
    unanswered = collections.Counter(r for r in reasons if r in REFUSED_FINISH)
    return {"rows": n, "unanswered": dict(sorted(unanswered.items()))}
