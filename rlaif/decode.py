"""Decode one video into sampled, resized RGB frames, or say precisely why not.

Runs inside a disposable child process (see `rlaif.isolation`): decord can segfault or hang on corrupt input, and
the process doing this must be one whose death loses nothing. Every failure becomes a `VideoRejected` with a short
machine-readable `reason` (the quarantine column) and a human-readable detail.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from rlaif.frames import sample_indices

# Reasons a video is quarantined. Stable strings: they are a column of quarantine.parquet.
MISSING = "missing"
NOT_A_FILE = "not_a_file"
UNREADABLE = "unreadable"
EMPTY = "empty"
TOO_LARGE = "too_large"
UNDECODABLE = "undecodable"
NO_VIDEO_STREAM = "no_video_stream"
BAD_DIMENSIONS = "bad_dimensions"
NO_FRAMES = "no_frames"
TOO_MANY_FRAMES = "too_many_frames"
FRAME_READ_FAILED = "frame_read_failed"
DECODER_CRASHED = "decoder_crashed"
TIMEOUT = "timeout"

MAX_SIDE = 16384  # pixels; larger declared frames are corrupt headers (or decompression bombs)


class VideoRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)  # both in args, so the exception pickles back from the child intact
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class DecodeSpec:
    """How to sample and resize; one per ingest run (from IngestConfig)."""

    num_frames: int = 8
    sampling: str = "uniform"
    sample_fps: float = 2.0
    height: int = 112
    width: int = 112
    max_file_bytes: int = 2 << 30
    max_source_frames: int = 1_000_000


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T, height, width, 3) uint8, RGB
    frame_indices: list[int]
    duration_s: float
    fps: float
    n_frames: int  # frames in the source
    width: int  # source size
    height: int
    codec: str = ""
    extra: dict = field(default_factory=dict)


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _read_remote(uri: str, max_bytes: int) -> bytes:
    """Bytes of an object-store (s3://, gs://) or fsspec (http://...) video, through pyarrow filesystems."""
    import pyarrow.fs as pafs

    from rlaif.storage import filesystem

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise VideoRejected(MISSING, f"no such object: {uri}")
    if info.type != pafs.FileType.File:
        raise VideoRejected(NOT_A_FILE, f"not a file: {uri}")
    if info.size is not None and info.size > max_bytes:
        raise VideoRejected(TOO_LARGE, f"{info.size} bytes > max_file_bytes={max_bytes}")
    try:
        with fs.open_input_stream(path) as f:
            data = f.read(max_bytes + 1)
    except PermissionError as err:
        raise VideoRejected(UNREADABLE, f"permission denied: {uri} ({err})") from err
    if len(data) > max_bytes:
        raise VideoRejected(TOO_LARGE, f"more than max_file_bytes={max_bytes}")
    return data


def open_source(uri: str, max_bytes: int):
    """A path (local) or a BytesIO (remote), after the checks that need no decoder."""
    if not _is_local(uri):
        data = _read_remote(uri, max_bytes)
        if not data:
            raise VideoRejected(EMPTY, "0 bytes")
        return io.BytesIO(data)
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if not os.path.lexists(path):
        raise VideoRejected(MISSING, f"no such file: {path}")
    if not os.path.exists(path):
        raise VideoRejected(MISSING, f"dangling symlink: {path}")
    if not os.path.isfile(path):
        raise VideoRejected(NOT_A_FILE, f"not a regular file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise VideoRejected(EMPTY, "0 bytes")
    if size > max_bytes:
        raise VideoRejected(TOO_LARGE, f"{size} bytes > max_file_bytes={max_bytes}")
    if not os.access(path, os.R_OK):
        raise VideoRejected(UNREADABLE, f"permission denied: {path}")
    return path


def probe(src) -> dict:
    """Container facts from PyAV without decoding: reject absurd headers before the decoder allocates for them."""
    import av

    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        with av.open(src, "r") as container:
            streams = container.streams.video
            if not streams:
                raise VideoRejected(NO_VIDEO_STREAM, "the container has no video stream")
            s = streams[0]
            info = {"width": int(s.codec_context.width or 0), "height": int(s.codec_context.height or 0),
                    "codec": s.codec_context.name or "", "declared_frames": int(s.frames or 0)}
    except VideoRejected:
        raise
    except Exception as err:  # PyAV raises many types (InvalidDataError, EOFError, ...)
        raise VideoRejected(UNDECODABLE, f"{type(err).__name__}: {err}") from None
    if isinstance(src, io.BytesIO):
        src.seek(0)
    if not (0 < info["width"] <= MAX_SIDE and 0 < info["height"] <= MAX_SIDE):
        raise VideoRejected(BAD_DIMENSIONS, f"declared frame size {info['width']}x{info['height']}")
    return info


def decode_video(uri: str, spec: DecodeSpec) -> DecodedVideo:
    """Probe, open with decord (resizing while decoding), sample, read. Raises VideoRejected on any bad input."""
    import decord

    src = open_source(uri, spec.max_file_bytes)
    info = probe(src)
    try:
        vr = decord.VideoReader(src, ctx=decord.cpu(0), width=spec.width, height=spec.height, num_threads=1)
    except Exception as err:  # DECORDError is not a RuntimeError subclass
        raise VideoRejected(UNDECODABLE, f"{type(err).__name__}: {err}") from None
    n = len(vr)
    if n <= 0:
        raise VideoRejected(NO_FRAMES, "the video stream has no decodable frames")
    if n > spec.max_source_frames:
        raise VideoRejected(TOO_MANY_FRAMES, f"{n} frames > max_source_frames={spec.max_source_frames}")
    fps = float(vr.get_avg_fps() or 0.0)
    idx = sample_indices(n, fps, mode=spec.sampling, num_frames=spec.num_frames, sample_fps=spec.sample_fps)
    try:
        frames = vr.get_batch(idx).asnumpy()
    except Exception as err:
        raise VideoRejected(FRAME_READ_FAILED, f"{type(err).__name__}: {err}") from None
    if frames.shape != (len(idx), spec.height, spec.width, 3):
        raise VideoRejected(FRAME_READ_FAILED, f"decoder returned shape {frames.shape}")
    duration = n / fps if fps > 0 else float("nan")
    return DecodedVideo(frames=np.ascontiguousarray(frames, dtype=np.uint8), frame_indices=idx, duration_s=duration,
                        fps=fps, n_frames=n, width=info["width"], height=info["height"], codec=info["codec"])
