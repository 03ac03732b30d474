"""Questions stage: prompts (question + reference answer) per video, from a user file or written by an LLM from the
caption, split into train and eval by video (eval videos are never trained on)."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actors.pool import EnginePool
from rlaif.config import QuestionsConfig, RunConfig
from rlaif.prompts import question_messages
from rlaif.schemas import PROMPTS

from pipelines.io import read_table, write_table

log = logging.getLogger(__name__)

def qa_regex(max_tokens: int) -> str:
    """The reply shape, bounded so it fits in max_tokens even at one token per character."""
    room = max(8, max_tokens - 8)
    return rf"Question: [^\n]{{3,{room * 2 // 3}}}\nAnswer: [^\n]{{1,{max(1, room // 3)}}}"
_QA = re.compile(r"Question:\s*(.+?)\s*\n\s*Answer:\s*(.+)", re.IGNORECASE)


def split_for(video_id: str, eval_fraction: float, seed: int) -> str:
    """Deterministic by video: the same video is always in the same split, whatever else is in the corpus."""
    h = int(hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < eval_fraction else "train"


def parse_qa(text: str) -> tuple[str, str] | None:
    m = _QA.search(text or "")
    return (m.group(1).strip(), m.group(2).strip()) if m else None


def prompts_from_file(q: QuestionsConfig, videos: pa.Table, seed: int) -> list[dict]:
    if not q.file:
        raise ValueError("questions.source is 'file' but questions.file is not set")
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
        rows.append({"prompt_id": f"{vid}-q{j}", "video_id": vid, "question": r["question"],
                     "reference_answer": r.get("reference_answer") or r.get("answer"),
                     "split": split_for(vid, q.eval_fraction, seed), "source": "file"})
    return rows


def prompts_from_captions(q: QuestionsConfig, captions: pa.Table, pool: EnginePool, seed: int) -> tuple[list[dict], int]:
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
                         "reference_answer": qa[1], "split": split_for(c["video_id"], q.eval_fraction, seed),
                         "source": "generated"})
    return rows, failures


def run_questions(cfg: RunConfig, run_dir: Path, pool: EnginePool | None) -> dict:
    q = cfg.questions
    failures = 0
    if q.source == "file":
        rows = prompts_from_file(q, read_table(run_dir / "videos.parquet", ["video_id", "uri"]), cfg.seed)
    else:
        rows, failures = prompts_from_captions(q, read_table(run_dir / "captions.parquet"), pool, cfg.seed)
    table = pa.Table.from_pylist(rows, schema=PROMPTS)
    write_table(table, run_dir / "prompts.parquet")
    n_eval = sum(r["split"] == "eval" for r in rows)
    log.info("prompts: %d (%d train, %d eval), %d unparsable generations", len(rows), len(rows) - n_eval, n_eval, failures)
    return {"rows": len(rows), "train": len(rows) - n_eval, "eval": n_eval, "parse_failures": failures}
