"""Rollout stage: the policy pool (current weights) answers every prompt K times, with the video in view; with
models.extra_responders (MMAIP-V's response set) every other pool answers K times too, in the same table (the
`model` column says who answered)."""
from __future__ import annotations

import collections
import logging

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from actors.pool import EngineClient, EnginePool
from actors.progress import expect
from rlaif.config import RunConfig
from rlaif.layout import RunLayout
from rlaif.placement import task_rows
from rlaif.prompts import video_question_messages
from rlaif.schemas import REFUSED_FINISH, ROLLOUTS, frames_fps, frames_of
from rlaif.seeding import seeded
from rlaif.storage import RunPath

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import row_count, scan, write_dataset, write_table
from pipelines.stages.joins import Rows, joined, rows_with_frames, stored

log = logging.getLogger(__name__)
JUDGE_CONTEXT = ("question", "reference_answer", "caption")  # what the judge reads beside an answer


class AnswerPrompts(EngineClient):
    def __init__(self, engines: list, sampling: dict, model: str, round_idx: int, sample_offset: int = 0,
                 carry: tuple[str, ...] = ()):
        super().__init__(engines)
        self.sampling, self.model, self.round_idx = sampling, model, round_idx
        self.sample_offset = sample_offset  # keeps (prompt_id, sample_idx) unique across the pools of one rollout
        self.carry = carry  # prompt columns each answer keeps beside ROLLOUTS' (the judge's context, down the stream)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [{"messages": video_question_messages(r["question"]), "frames": frames_of(r), "fps": frames_fps(r)}
                    for r in rows]
        samplings = [seeded(self.sampling, r["prompt_id"], self.round_idx, self.sample_offset, "answer") for r in rows]
        outs = self.call(requests, samplings)
        answers = pa.Table.from_pylist(
            [{"prompt_id": r["prompt_id"], "sample_idx": self.sample_offset + k, "model": self.model,
              "response": s["text"].strip(), "n_tokens": s["n_tokens"], "finish_reason": s["finish_reason"],
              "round": self.round_idx}
             for r, samples in zip(rows, outs) for k, s in enumerate(samples)], schema=ROLLOUTS)
        for name in self.carry:
            answers = answers.append_column(name, pa.array([r[name] for r, samples in zip(rows, outs) for _ in samples],
                                                           batch.schema.field(name).type))
        return answers


def rollout_sampling(cfg: RunConfig) -> dict:
    return {"n": cfg.rollout.samples_per_prompt, "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
            "max_tokens": cfg.rollout.max_tokens}


PROMPT_COLUMNS = ["prompt_id", "video_id", "question"]


def answers_dataset(layout: RunLayout, pools: EnginePool | list[EnginePool], split: str, sampling: dict,
                    round_idx: int, evidence: RunPath | None = None) -> ray.data.Dataset | None:
    """Every prompt of `split` answered `sampling['n']` times by each pool, as a stream of ROLLOUTS batches (None when
    the split has no prompts): a following stage (the judge) can consume answers while later ones are generated.
    With `evidence` (a captions table) each answer also carries its judging context (JUDGE_CONTEXT: the question, the
    reference answer and its video's caption from `evidence`), so the judge down the stream joins nothing."""
    n = row_count(layout.prompts, pc.field("split") == split) if row_count(layout.prompts) else 0
    in_split = [("split", "==", split)]
    if evidence is None:
        return prompt_answers(layout, pools, stored(layout.prompts, PROMPT_COLUMNS, in_split), sampling, round_idx, n)
    prompts = stored(layout.prompts, PROMPT_COLUMNS + ["reference_answer"], in_split)
    # A left join: a prompt whose video has no caption is answered, and the judge reports it (judge.with_context).
    with_captions = joined(prompts, stored(evidence, ["video_id", "caption"]), "video_id", how="left")
    return prompt_answers(layout, pools, with_captions, sampling, round_idx, n, carry=JUDGE_CONTEXT)


def prompt_answers(layout: RunLayout, pools: EnginePool | list[EnginePool], prompts: Rows | pa.Table, sampling: dict,
                   round_idx: int, rows: int | None = None, carry: tuple[str, ...] = ()) -> ray.data.Dataset | None:
    """answers_dataset for any prompts (prompt_id, video_id, question: `rows` of them, or a caller's small table) of
    the run's ingested videos. Each answer keeps its prompt's `carry` columns beside ROLLOUTS'."""
    pools = pools if isinstance(pools, list) else [pools]
    if isinstance(prompts, pa.Table):  # a caller's own few prompts (the experiment's gate)
        prompts, rows = Rows(prompts.num_rows, table=ray.put(prompts.select(PROMPT_COLUMNS))), prompts.num_rows
    if not rows:
        return None
    expect(rows * sampling["n"] * len(pools))
    with_frames = rows_with_frames(layout.videos, prompts)
    # Blocks of one engine batch each, so that an answered batch goes on downstream (to the judge) at once instead
    # of waiting in its task's output block for the rest of the block's batches; several batches each past
    # max(64, 4 x engines) of them, since the driver holds memory per task (rlaif.placement.task_rows).
    parts = [pool.map_batches(with_frames.repartition(
                                  target_num_rows_per_block=task_rows(rows, pool.cfg.batch_size, len(pool.actors))),
                              AnswerPrompts, sampling=sampling, model=pool.model_path, round_idx=round_idx,
                              sample_offset=i * sampling["n"], carry=carry) for i, pool in enumerate(pools)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def finish_reasons(path: RunPath) -> dict[str, int]:
    """How many answers of a stored ROLLOUTS (or JUDGMENTS) table ended with each finish_reason (the driver scans
    the one column batch by batch)."""
    counts: collections.Counter = collections.Counter()
    for batch in scan(path, ["finish_reason"]):
        counts.update(batch.column(0).to_pylist())
    return dict(counts)


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
