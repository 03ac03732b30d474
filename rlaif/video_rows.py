"""Batch step of ingest: a batch of (video_id, uri) rows in, one `schemas.DECODED` row out per input, always.

A callable class so Ray Data can run it in an actor pool (`map_batches(VideoRowDecoder, ...)`), but it imports no
Ray: each actor owns one `IsolatedWorker`, so a decoder segfault or hang costs one child process and one row,
never the actor, the batch, or the run.

Bad input and bugs are told apart by where the exception comes from (`rlaif.decode` module docstring):
- the input's fault, quarantined with its reason: a `VideoRejected` (the decoder libraries' and the file system's
  verdicts, which `rlaif.decode` turns into reasons where it calls them), a decoding child that dies
  (`decoder_crashed`) or overruns the timeout (`timeout`), and running out of memory (`too_large`);
- not the input's fault, quarantined as `internal_error` with the exception's type and traceback: every other
  exception, raised by our code in the child (`decode_in_child` catches it there, where the traceback still exists)
  or in this process (building the row, the isolation layer). Ingest counts them apart and stops the run when there
  are too many (`ingest.max_internal_error_share`).
"""
from __future__ import annotations

import importlib
import logging
import math
import traceback as tb
from typing import Callable

import pyarrow as pa

from rlaif import decode
from rlaif.decode import DecodeSpec, VideoRejected
from rlaif.isolation import ChildCrashed, ChildTimeout, IsolatedWorker
from rlaif.schemas import DECODED

log = logging.getLogger(__name__)

MAX_TRACEBACK_CHARS = 20_000


class InternalErrors(RuntimeError):
    """More of the inputs than ingest.max_internal_error_share failed with internal errors (bugs, not bad input)."""


class InternalError(Exception):
    """An exception raised outside the decoder libraries' calls while decoding a video (a bug), carried back from the
    decoding child as text: its type, message and traceback (the traceback itself does not pickle)."""

    def __init__(self, type_name: str, message: str, traceback: str):
        super().__init__(type_name, message, traceback)  # all in args: pickles back from the child intact
        self.type_name, self.message, self.traceback = type_name, message, traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"

    @classmethod
    def of(cls, err: BaseException) -> "InternalError":
        """From an exception being handled (its traceback is the current one)."""
        kind = type(err)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return cls(name, str(err), tb.format_exc())


def decode_in_child(decoder: str, uri: str, spec: DecodeSpec) -> decode.DecodedVideo:
    """Runs in the decoding child: the configured decoder on one video. A `VideoRejected` goes back as it is; running
    out of memory is the input's size (`too_large`); any other exception is a bug and goes back as an InternalError
    with its traceback."""
    try:
        return resolve(decoder)(uri, spec)
    except VideoRejected:
        raise
    except MemoryError as err:
        raise VideoRejected(decode.TOO_LARGE, f"out of memory while decoding ({err})") from None
    except Exception as err:
        raise InternalError.of(err) from None


def _bad(video_id: str, uri: str, reason: str, error: str, traceback: str | None = None) -> dict:
    return {"video_id": video_id, "uri": uri, "status": "quarantined", "reason": reason, "error": error[:2000],
            "duration_s": None, "fps": None, "n_frames": None, "width": None, "height": None, "codec": None,
            "frame_indices": None, "frames_shape": None, "frames": None, "warnings": None,
            "traceback": traceback[-MAX_TRACEBACK_CHARS:] if traceback else None}


def _internal(video_id: str, uri: str, err: InternalError) -> dict:
    log.error("internal error (a bug, not bad input) decoding %s: %s\n%s", uri, err, err.traceback)
    return _bad(video_id, uri, decode.INTERNAL_ERROR, str(err), err.traceback)


def _good(video_id: str, uri: str, v: decode.DecodedVideo) -> dict:
    return {"video_id": video_id, "uri": uri, "status": "ok", "reason": None, "error": None,
            "duration_s": None if math.isnan(v.duration_s) else v.duration_s, "fps": v.fps, "n_frames": v.n_frames,
            "width": v.width, "height": v.height, "codec": v.codec, "frame_indices": v.frame_indices,
            "frames_shape": list(v.frames.shape), "frames": v.frames.tobytes(), "warnings": list(v.warnings),
            "traceback": None}


def resolve(dotted: str) -> Callable:
    """'package.module:function' -> the function (it must be importable in the child process too)."""
    module, _, name = dotted.partition(":")
    if not name:
        raise ValueError(f"expected 'module:function', got {dotted!r}")
    return getattr(importlib.import_module(module), name)


class VideoRowDecoder:
    def __init__(self, spec: DecodeSpec, timeout_s: float = 120.0, decoder: str = "rlaif.decode:decode_video"):
        self.spec = spec
        self.decoder = decoder
        resolve(decoder)  # a bad name fails here, at the start, not once per video
        self.worker = IsolatedWorker(timeout_s=timeout_s, quiet=True)

    def decode_one(self, video_id: str, uri: str) -> dict:
        try:
            video = self.worker.call(decode_in_child, self.decoder, uri, self.spec)
        except VideoRejected as err:
            return _bad(video_id, uri, err.reason, err.detail)
        except ChildCrashed as err:
            return _bad(video_id, uri, decode.DECODER_CRASHED, str(err))
        except ChildTimeout as err:
            return _bad(video_id, uri, decode.TIMEOUT, str(err))
        except InternalError as err:
            return _internal(video_id, uri, err)
        except Exception as err:  # raised here, not by the decoder: the isolation layer's or our bug
            return _internal(video_id, uri, InternalError.of(err))
        try:
            return _good(video_id, uri, video)
        except Exception as err:
            return _internal(video_id, uri, InternalError.of(err))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.decode_one(v, u) for v, u in zip(batch.column("video_id").to_pylist(), batch.column("uri").to_pylist())]
        return pa.Table.from_pylist(rows, schema=DECODED)

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()
