"""Batch step of ingest: a batch of (video_id, uri) rows in, one `schemas.VIDEOS` row out per input, always.

A callable class so Ray Data can run it in an actor pool (`map_batches(VideoRowDecoder, ...)`), but it imports no
Ray: each actor owns one `IsolatedWorker`, so a decoder segfault or hang costs one child process and one row,
never the actor, the batch, or the run.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable

import pyarrow as pa

from rlaif import decode
from rlaif.decode import DecodeSpec, VideoRejected
from rlaif.isolation import ChildCrashed, ChildTimeout, IsolatedWorker
from rlaif.schemas import VIDEOS


def _bad(video_id: str, uri: str, reason: str, error: str) -> dict:
    return {"video_id": video_id, "uri": uri, "status": "quarantined", "reason": reason, "error": error[:2000],
            "duration_s": None, "fps": None, "n_frames": None, "width": None, "height": None, "codec": None,
            "frame_indices": None, "frames_shape": None, "frames": None}


def _good(video_id: str, uri: str, v: decode.DecodedVideo) -> dict:
    return {"video_id": video_id, "uri": uri, "status": "ok", "reason": None, "error": None,
            "duration_s": None if math.isnan(v.duration_s) else v.duration_s, "fps": v.fps, "n_frames": v.n_frames,
            "width": v.width, "height": v.height, "codec": v.codec, "frame_indices": v.frame_indices,
            "frames_shape": list(v.frames.shape), "frames": v.frames.tobytes()}


def resolve(dotted: str) -> Callable:
    """'package.module:function' -> the function (it must be importable in the child process too)."""
    module, _, name = dotted.partition(":")
    if not name:
        raise ValueError(f"expected 'module:function', got {dotted!r}")
    return getattr(importlib.import_module(module), name)


class VideoRowDecoder:
    def __init__(self, spec: DecodeSpec, timeout_s: float = 120.0, decoder: str = "rlaif.decode:decode_video"):
        self.spec = spec
        self.decode_fn = resolve(decoder)
        self.worker = IsolatedWorker(timeout_s=timeout_s, quiet=True)

    def decode_one(self, video_id: str, uri: str) -> dict:
        try:
            return _good(video_id, uri, self.worker.call(self.decode_fn, uri, self.spec))
        except VideoRejected as err:
            return _bad(video_id, uri, err.reason, err.detail)
        except ChildCrashed as err:
            return _bad(video_id, uri, decode.DECODER_CRASHED, str(err))
        except ChildTimeout as err:
            return _bad(video_id, uri, decode.TIMEOUT, str(err))
        except Exception as err:  # an unexpected error is still one bad row, reported with its type
            return _bad(video_id, uri, decode.UNDECODABLE, f"{type(err).__name__}: {err}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.decode_one(v, u) for v, u in zip(batch.column("video_id").to_pylist(), batch.column("uri").to_pylist())]
        return pa.Table.from_pylist(rows, schema=VIDEOS)

    def __del__(self):
        self.worker.close()
