"""Questions about a video: reading an LLM's generated question/answer, and the train/eval split by video."""
from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc

from rlaif.schemas import PROMPTS

_QA = re.compile(r"Question:\s*(.+?)\s*\n\s*Answer:\s*(.+)", re.IGNORECASE)


def qa_regex(max_tokens: int) -> str:
    """The reply shape, bounded so it fits in max_tokens even at one token per character."""
    room = max(8, max_tokens - 8)
    return rf"Question: [^\n]{{3,{room * 2 // 3}}}\nAnswer: [^\n]{{1,{max(1, room // 3)}}}"


def split_rank(video_id: str, seed: int) -> str:
    """The seeded hash by which videos are ranked for the split (the lowest go to eval)."""
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def eval_count(n_videos: int, eval_fraction: float) -> int:
    """round(fraction × n) videos held out, at least one when the fraction is positive and there are two or more
    videos, and never all of them."""
    n_eval = round(eval_fraction * n_videos)
    if eval_fraction > 0 and n_videos >= 2:
        n_eval = min(max(n_eval, 1), n_videos - 1)
    return n_eval


def assign_splits(video_ids: list[str], eval_fraction: float, seed: int) -> dict[str, str]:
    """Split by video (eval videos are never trained on): the eval_count(n) videos whose split_rank is lowest go to
    eval, the others to train."""
    ranked = sorted(set(video_ids), key=lambda v: split_rank(v, seed))
    n_eval = eval_count(len(ranked), eval_fraction)
    return {v: "eval" if i < n_eval else "train" for i, v in enumerate(ranked)}


SPLITS = (None, "train", "eval")  # a questions file's split values (None: drawn by video)


def file_prompts(table: pa.Table, max_per_video: int | None) -> pa.Table:
    """Prompt rows (schemas.PROMPTS) from whole videos' rows of a questions file, matched to their ingested videos
    (`video_id`, `question`, optional `reference_answer` or `answer`, optional `split`, and `row`, the row's place in
    the file): each video's questions in file order, numbered `{video_id}-q{j}`, at most `max_per_video`."""
    rows = sorted(table.to_pylist(), key=lambda r: r["row"])
    out, count = [], {}
    for r in rows:
        vid = r["video_id"]
        j = count.get(vid, 0)
        if max_per_video and j >= max_per_video:
            continue
        count[vid] = j + 1
        out.append({"prompt_id": f"{vid}-q{j}", "video_id": vid, "question": r["question"],
                    "reference_answer": r.get("reference_answer") or r.get("answer"), "source": "file",
                    "split": r.get("split")})
    return pa.Table.from_pylist(out, schema=PROMPTS)


def generated_prompts(video_ids: list[str], samples: list[list[str]]) -> pa.Table:
    """Prompt rows from the question writer's samples for each video (`{video_id}-g{j}`, j the sample); a sample
    that does not parse is a row with no question (counted, then dropped by `with_splits`)."""
    out = []
    for vid, texts in zip(video_ids, samples):
        for j, text in enumerate(texts):
            qa = parse_qa(text) or (None, None)
            out.append({"prompt_id": f"{vid}-g{j}", "video_id": vid, "question": qa[0], "reference_answer": qa[1],
                        "source": "generated", "split": None})
    return pa.Table.from_pylist(out, schema=PROMPTS)


def unsplit_videos(prompts: pa.Table, seed: int) -> pa.Table:
    """The distinct videos that have a question without a split, with their split_rank (`rank`)."""
    keep = pc.and_(pc.is_null(prompts.column("split")), pc.is_valid(prompts.column("question")))
    ids = pc.unique(prompts.column("video_id").filter(keep)).to_pylist()
    return pa.table({"video_id": pa.array(ids, pa.string()), "rank": pa.array([split_rank(v, seed) for v in ids],
                                                                             pa.string())})


def drawn_splits(prompts: pa.Table, eval_fraction: float, seed: int) -> pa.Table:
    """(video_id, drawn_split) for every video with a question the file left unsplit (assign_splits)."""
    ids = unsplit_videos(prompts, seed).column("video_id").to_pylist()
    splits = assign_splits(ids, eval_fraction, seed)
    return pa.table({"video_id": pa.array(list(splits), pa.string()),
                     "drawn_split": pa.array(list(splits.values()), pa.string())})


def with_splits(prompts: pa.Table) -> pa.Table:
    """The prompts that have a question, each with its split: the file's, else the one drawn for its video
    (`drawn_split`; a video drawn for eval is named there, any other is train)."""
    prompts = prompts.filter(pc.is_valid(prompts.column("question")))
    drawn = prompts.column("drawn_split") if "drawn_split" in prompts.column_names else pa.nulls(len(prompts), pa.string())
    split = pc.coalesce(prompts.column("split"), drawn, pa.scalar("train"))
    return prompts.set_column(prompts.schema.get_field_index("split"), "split", split).select(PROMPTS.names).cast(PROMPTS)


def parse_qa(text: str) -> tuple[str, str] | None:
    m = _QA.search(text or "")
    return (m.group(1).strip(), m.group(2).strip()) if m else None
