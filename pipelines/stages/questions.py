"""Questions stage: prompts (question + reference answer) per video, from a user file or written by an LLM from the
caption, split into train and eval by video (eval videos are never trained on).

Streamed either way (pipelines.stages.joins): a file's rows are matched to the ingested videos by a join, a video's
questions numbered where its rows are grouped; generated ones are written by the judge pool's engines from the
captions' stream. The driver holds references and counts: the split is drawn from the distinct videos' seeded hashes
(a task for a small run; Ray Data's sort and limit for a large one), then joined back to the prompts."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from actors.pool import EngineClient
from rlaif.config import QuestionsConfig
from rlaif.prompts import question_messages
from rlaif.questions import (SPLITS, drawn_splits, eval_count, file_prompts, generated_prompts, qa_regex,
                             unsplit_videos, with_splits)
from rlaif.schemas import PROMPTS
from rlaif.seeding import seeded
from rlaif.storage import RunPath

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import column_names, read_dataset, row_count, scan, write_dataset
from pipelines.stages.joins import Rows, apply, collected, join_batch, joined, mapped, numbered, per_group, stored

log = logging.getLogger(__name__)


def prompts_from_file(q: QuestionsConfig, videos: RunPath) -> Rows:
    """The file's questions about ingested videos (matched by video_id, else by uri), numbered per video."""
    path, names = RunPath.of(q.file), column_names(q.file)
    key = "video_id" if "video_id" in names else "uri"
    if key not in names or "question" not in names:
        raise ValueError(f"{q.file}: a questions file needs `question` and `video_id` or `uri` columns")
    if "split" in names:  # checked by a scan before any task reads it (a clear error, not a failed task)
        found = {v for b in scan(path, ["split"]) for v in pc.unique(b.column(0)).to_pylist()}
        if bad := sorted(map(str, found - set(SPLITS))):
            raise ValueError(f"{q.file}: split must be 'train' or 'eval', got {', '.join(bad)}")
    columns = [key, "question"] + [c for c in ("reference_answer", "answer", "split") if c in names]
    given = joined(numbered(path, columns), stored(videos, ["video_id", "uri"] if key == "uri" else ["video_id"]), key)
    return per_group(given, "video_id", file_prompts, q.max_per_video)


class WriteQuestions(EngineClient):
    """The judge's engines write `per_video` question/answer samples from each caption of a batch."""

    def __init__(self, engines: list, sampling: dict):
        super().__init__(engines)
        self.sampling = sampling

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, captions = batch.column("video_id").to_pylist(), batch.column("caption").to_pylist()
        outs = self.call([{"messages": question_messages(c)} for c in captions],
                         [seeded(self.sampling, v, "questions") for v in ids])
        return generated_prompts(ids, [[s["text"] for s in samples] for samples in outs])


def prompts_from_captions(q: QuestionsConfig, captions: RunPath, pool) -> Rows:
    sampling = {"n": q.per_video, "temperature": 0.8 if q.per_video > 1 else 0.0, "max_tokens": q.max_tokens,
                "regex": qa_regex(q.max_tokens)}
    ds = pool.map_batches(read_dataset(captions, ["video_id", "caption"]), WriteQuestions, sampling=sampling)
    return collected(ds, row_count(captions) * q.per_video, PROMPTS)


def split_by_video(prompts: Rows, eval_fraction: float, seed: int) -> Rows:
    """Each prompt with its split: the file's, else the one drawn for its video (rlaif.questions.assign_splits)."""
    if prompts.small:
        return Rows(prompts.rows, table=apply.remote(_split_table, prompts.table, eval_fraction, seed))
    videos = (prompts.dataset.map_batches(unsplit_videos, fn_args=(seed,), batch_format="pyarrow")
              .groupby(["video_id", "rank"]).count().select_columns(["video_id", "rank"]).materialize())  # distinct
    n_eval = eval_count(videos.count(), eval_fraction)
    if n_eval == 0:
        return Rows(prompts.rows, dataset=prompts.dataset)
    held_out = videos.sort("rank").limit(n_eval).map_batches(_drawn_eval, batch_format="pyarrow")
    return joined(prompts, Rows(n_eval, dataset=held_out), "video_id", how="left")


def _split_table(prompts: pa.Table, eval_fraction: float, seed: int) -> pa.Table:
    return join_batch(prompts, drawn_splits(prompts, eval_fraction, seed), "video_id", how="left")


def _drawn_eval(table: pa.Table) -> pa.Table:
    return pa.table({"video_id": table.column("video_id"), "drawn_split": pa.array(["eval"] * len(table), pa.string())})


@stage("questions", "seed")
def questions(ctx: StageContext) -> dict:
    """prompts.parquet: the questions of every ingested video, with their split."""
    cfg, q, out = ctx.cfg, ctx.cfg.questions, ctx.layout.prompts
    if q.source == "file":
        prompts = prompts_from_file(q, ctx.layout.videos).executed()
    else:  # the judge pool writes them from the captions
        prompts = prompts_from_captions(q, ctx.layout.captions, ctx.judge_pool)
    written = prompts.count()  # with the generations that did not parse (no question), dropped by with_splits
    write_dataset(mapped(split_by_video(prompts, q.eval_fraction, cfg.seed), with_splits), out, PROMPTS)
    rows, n_eval = row_count(out), row_count(out, pc.field("split") == "eval")
    failures = written - rows if q.source != "file" else 0
    log.info("prompts: %d (%d train, %d eval), %d unparsable generations", rows, rows - n_eval, n_eval, failures)
    return {"rows": rows, "train": rows - n_eval, "eval": n_eval, "parse_failures": failures}
