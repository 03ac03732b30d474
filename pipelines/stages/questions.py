"""Questions stage: prompts (question + reference answer) per video, from a user file or written by an LLM from the
caption, split into train and eval by video (eval videos are never trained on)."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from actors.pool import EnginePool
from rlaif.config import QuestionsConfig
from rlaif.prompts import question_messages
from rlaif.questions import assign_splits, parse_qa, qa_regex
from rlaif.schemas import PROMPTS

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import read_table, write_table

log = logging.getLogger(__name__)


def prompts_from_file(q: QuestionsConfig, videos: pa.Table) -> list[dict]:
    given = pq.read_table(q.file)
    key = "video_id" if "video_id" in given.column_names else "uri"
    if key not in given.column_names or "question" not in given.column_names:
        raise ValueError(f"{q.file}: a questions file needs `question` and `video_id` or `uri` columns")
    id_of = dict(zip(videos.column(key).to_pylist(), videos.column("video_id").to_pylist()))
    rows, count = [], {}
    for r in given.to_pylist():
        vid = id_of.get(r[key])
        if vid is None:
            continue  # a video that was quarantined or not ingested
        j = count.get(vid, 0)
        if q.max_per_video and j >= q.max_per_video:
            continue
        count[vid] = j + 1
        split = r.get("split")
        if split not in (None, "train", "eval"):
            raise ValueError(f"{q.file}: split must be 'train' or 'eval', got {split!r}")
        rows.append({"prompt_id": f"{vid}-q{j}", "video_id": vid, "question": r["question"],
                     "reference_answer": r.get("reference_answer") or r.get("answer"), "source": "file",
                     "split": split})
    return rows


def prompts_from_captions(q: QuestionsConfig, captions: pa.Table, pool: EnginePool) -> tuple[list[dict], int]:
    rows, failures = [], 0
    caps = captions.to_pylist()
    requests = [{"messages": question_messages(c["caption"])} for c in caps]
    outs = pool.generate(requests, {"n": q.per_video, "temperature": 0.8 if q.per_video > 1 else 0.0,
                                    "max_tokens": q.max_tokens, "regex": qa_regex(q.max_tokens)})
    for c, samples in zip(caps, outs):
        for j, s in enumerate(samples):
            qa = parse_qa(s["text"])
            if qa is None:
                failures += 1
                continue
            rows.append({"prompt_id": f"{c['video_id']}-g{j}", "video_id": c["video_id"], "question": qa[0],
                         "reference_answer": qa[1], "source": "generated"})
    return rows, failures


@stage("questions", "seed")
def questions(ctx: StageContext) -> dict:
    """prompts.parquet: the questions of every ingested video, with their split."""
    cfg, q = ctx.cfg, ctx.cfg.questions
    failures = 0
    if q.source == "file":
        rows = prompts_from_file(q, read_table(ctx.layout.videos, ["video_id", "uri"]))
    else:  # the judge pool writes them from the captions
        rows, failures = prompts_from_captions(q, read_table(ctx.layout.captions), ctx.judge_pool)
    # A split the questions file gives wins (a fixed held-out set); the others are drawn by video.
    splits = assign_splits([r["video_id"] for r in rows if not r.get("split")], q.eval_fraction, cfg.seed)
    for r in rows:
        r["split"] = r.get("split") or splits[r["video_id"]]
    table = pa.Table.from_pylist(rows, schema=PROMPTS)
    write_table(table, ctx.layout.prompts)
    n_eval = sum(r["split"] == "eval" for r in rows)
    log.info("prompts: %d (%d train, %d eval), %d unparsable generations", len(rows), len(rows) - n_eval, n_eval, failures)
    return {"rows": len(rows), "train": len(rows) - n_eval, "eval": n_eval, "parse_failures": failures}
