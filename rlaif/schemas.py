"""Arrow schemas of the run folder's tables (one Parquet table per stage) and helpers to read them back.

Frames are stored as bytes plus their shape rather than as a tensor extension type: any Arrow reader (pyarrow without
Ray, DuckDB, Spark, pandas) can read them, and the schema is the same whatever the frame count. The bytes are raw
uint8 RGB, or one JPEG or PNG image of the frames stacked (ingest.frame_storage, rlaif.frames.encode_frames).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from rlaif.frames import decode_frames

VIDEOS = pa.schema([
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("status", pa.string()),          # "ok" | "quarantined"
    ("reason", pa.string()),          # short machine-readable cause when quarantined (rlaif.decode reasons)
    ("error", pa.string()),           # human-readable detail
    ("duration_s", pa.float64()),
    ("fps", pa.float64()),
    ("n_frames", pa.int64()),         # frames in the source video
    ("width", pa.int32()),            # source size
    ("height", pa.int32()),
    ("codec", pa.string()),
    ("frame_indices", pa.list_(pa.int32())),  # which source frames were sampled
    ("frames_shape", pa.list_(pa.int32())),   # (T, H, W, 3)
    ("frames", pa.large_binary()),            # frames_encoding: raw (uint8 RGB, C order), jpeg or png (rlaif.frames)
    ("frames_encoding", pa.string()),         # ingest.frame_storage; null (a row before it is stored): raw
    ("warnings", pa.list_(pa.string())),      # a kept video's oddities, "code: detail" (rlaif.decode: short_stream...)
])

# What the decoder step emits (rlaif.video_rows): a VIDEOS row, plus the traceback of an internal error (a bug, not
# bad input: reason "internal_error"). videos.parquet keeps the VIDEOS columns, quarantine.parquet QUARANTINE's.
DECODED = pa.schema(list(VIDEOS) + [("traceback", pa.string())])

QUARANTINE_COLUMNS = ["video_id", "uri", "reason", "error", "traceback"]
QUARANTINE = pa.schema([DECODED.field(c) for c in QUARANTINE_COLUMNS])


def frames_of(row: dict) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of one videos.parquet row (as given by `Table.to_pylist()` or a Ray Data row),
    however they are stored (ingest.frame_storage: the row's frames_encoding; sniffed when the caller did not read
    that column)."""
    return decode_frames(row["frames"], row["frames_shape"], row.get("frames_encoding"))


CAPTIONS = pa.schema([("video_id", pa.string()), ("caption", pa.string()), ("model", pa.string()),
                      ("prompt_version", pa.string())])

# Caption evaluation: one row per (held-out video, fact of its reference caption), judged against the policy's caption.
CAPTION_FACTS = pa.schema([("video_id", pa.string()), ("fact_idx", pa.int32()), ("fact", pa.string()),
                           ("verdict", pa.string()), ("parse_ok", pa.bool_())])

PROMPTS = pa.schema([("prompt_id", pa.string()), ("video_id", pa.string()), ("question", pa.string()),
                     ("reference_answer", pa.string()), ("split", pa.string()), ("source", pa.string())])

# finish_reason of a request an engine refused (e.g. a prompt over its context length), or that the client gave up on
# because it killed its engine every time it was sent (actors.pool.EngineClient): there is no answer.
PROMPT_TOO_LONG = "prompt_too_long"
REJECTED = "rejected"
ENGINE_CRASHED = "engine_crashed"
REFUSED_FINISH = (PROMPT_TOO_LONG, REJECTED, ENGINE_CRASHED)
TRUNCATED_FINISH = "length"  # an answer cut at max_tokens (an "endless" one)

ROLLOUTS = pa.schema([("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("model", pa.string()),
                      ("response", pa.string()), ("n_tokens", pa.int32()), ("finish_reason", pa.string()),
                      ("round", pa.int32())])

# score: what pairs and eval use (raw_score after the length penalty); raw_score: the judge's own (the mean of the
# aspects for the aspect judge); aspects: JSON of the aspect ratings, or null.
JUDGMENTS = pa.schema(list(ROLLOUTS) + [("score", pa.float64()), ("raw_score", pa.float64()), ("aspects", pa.string()),
                                        ("explanation", pa.string()), ("parse_ok", pa.bool_()),
                                        ("attempts", pa.int32()), ("judge_model", pa.string()),
                                        ("status", pa.string())])

PAIRS = pa.schema([("prompt_id", pa.string()), ("video_id", pa.string()), ("question", pa.string()),
                   ("chosen", pa.string()), ("rejected", pa.string()),
                   ("score_chosen", pa.float64()), ("score_rejected", pa.float64()),
                   ("chosen_tokens", pa.int64()), ("rejected_tokens", pa.int64()),
                   ("ref_logp_chosen", pa.float64()), ("ref_logp_rejected", pa.float64()), ("round", pa.int32())])


def frames_fps(row: dict) -> float:
    """The rate of the *sampled* frames (what the model sees), from the clip's duration; 2 fps when unknown."""
    duration = row.get("duration_s")
    n = row["frames_shape"][0]
    return n / duration if duration and duration > 0 else 2.0
