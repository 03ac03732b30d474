"""Decode one video into sampled, resized RGB frames, or say precisely why not.

Runs inside a disposable child process (see `rlaif.isolation`): decord can segfault or hang on corrupt input, and
the process doing this must be one whose death loses nothing. Every failure of the input becomes a `VideoRejected`
with a short machine-readable `reason` (the quarantine column) and a human-readable detail.

What counts as a failure of the input (and not of this code): an exception raised by a call into a decoder library
(PyAV, decord) or the file system on the input. Exactly those calls sit inside `try` blocks here, each turning what
it raises into a `VideoRejected`; our own logic (sampling, checks, array handling) stays outside them, so an
exception escaping `decode_video` is a bug, and `rlaif.video_rows` quarantines it as `internal_error` with its
traceback instead of passing it off as bad input.

A file that decodes can still be wrong. The rule: a video whose frames carry no picture is quarantined (`blank_video`:
every sampled frame one flat colour; `implausible_size`: a declared frame size the file is far too small to hold, a
decompression bomb, refused before the decoder allocates for it); a video whose frames are real but whose file is off
is kept, with a warning in `DecodedVideo.warnings` (the `warnings` column of videos.parquet): `short_stream` (fewer
frames than the header declares: sampled from the frames that are there), `resolution_change` (the frame size changes
mid-stream: every frame is resized to the requested size anyway), `timestamp_jump` (the timestamps go back mid-stream,
as in segments joined byte for byte: decord orders and seeks frames by timestamp and returns frames from the wrong
places, so the sampled frames are decoded by PyAV in stream order instead). The last two come from one PyAV pass over
the packets after decord has read the frames (`scan_stream`: every packet demuxed, keyframes decoded).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Iterator

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
BLANK_VIDEO = "blank_video"  # decodes, but every sampled frame is one flat colour: nothing to caption or learn from
IMPLAUSIBLE_SIZE = "implausible_size"  # declares a frame size the whole file is too small to encode even once
# Not the input's fault: an exception raised outside the decoder libraries' calls (a bug in this code or in the
# configured decoder); quarantined with its traceback and counted apart (rlaif.video_rows, ingest).
INTERNAL_ERROR = "internal_error"

# Warnings on a kept video (codes of the `warnings` column, each entry "code: detail").
SHORT_STREAM = "short_stream"  # fewer frames in the stream than its header declares
RESOLUTION_CHANGE = "resolution_change"  # the frame size changes mid-stream (every frame is resized anyway)
TIMESTAMP_JUMP = "timestamp_jump"  # the timestamps go back mid-stream; frames decoded by PyAV in stream order
STREAM_ERRORS = "stream_errors"  # PyAV's scan of the stream stopped on an error decord decoded past

MAX_SIDE = 16384  # pixels; larger declared frames are corrupt headers (or decompression bombs)
# A file holding less than one bit per 16x16 block of ONE frame of its declared size cannot carry a picture of that
# size (an intra frame costs more than that in any block codec): either the header lies (a decompression bomb: a
# 3.5 KB file declaring 4096x4096 makes decord decode 16 frames of 50 MB) or the content is flat, i.e. blank anyway.
MIN_BITS_PER_BLOCK = 1.0
# Every sampled frame one colour: the largest per-channel standard deviation over all sampled pixels is below this
# (a flat H.264 frame decodes to within +-1; a real clip's is tens).
BLANK_STD = 2.0
# Keyframes decoded when scanning for frame-size changes: all of the first 64, then every k-th, k growing (a few
# hundred for a long clip; the scan costs 5-20 % of a decode here: 0.05 s of bigbuckbunny's 0.26 s).
SCAN_ALL_KEYFRAMES = 64


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
    # A blank video (every sampled frame one flat colour): True rejects it (BLANK_VIDEO; ingest's rule), False keeps
    # it with a BLANK_VIDEO warning (serving answers about whatever it is sent).
    reject_blank: bool = False


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
    warnings: list[str] = field(default_factory=list)  # "code: detail" (SHORT_STREAM, RESOLUTION_CHANGE, ...)


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _read_remote(uri: str, max_bytes: int) -> bytes:
    """Bytes of an object-store (s3://, gs://) or fsspec (http://...) video, through pyarrow filesystems."""
    import pyarrow.fs as pafs

    from rlaif.storage import filesystem

    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as err:  # the object store's answer (network, credentials, ...)
        raise VideoRejected(UNREADABLE, f"{type(err).__name__}: {err}") from None
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
    except OSError as err:
        raise VideoRejected(UNREADABLE, f"{type(err).__name__}: {err}") from None
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
    try:
        size = os.path.getsize(path)
    except OSError as err:  # the file system's verdict on this path (EIO, a file removed meanwhile, ...)
        raise VideoRejected(UNREADABLE, f"{type(err).__name__}: {err}") from None
    if size == 0:
        raise VideoRejected(EMPTY, "0 bytes")
    if size > max_bytes:
        raise VideoRejected(TOO_LARGE, f"{size} bytes > max_file_bytes={max_bytes}")
    if not os.access(path, os.R_OK):
        raise VideoRejected(UNREADABLE, f"permission denied: {path}")
    return path


def _payload_bytes(src) -> int:
    """The bytes of the whole file (a path or an in-memory copy): an upper bound of what the video stream holds."""
    if isinstance(src, io.BytesIO):
        return len(src.getbuffer())
    try:
        return os.path.getsize(src)
    except OSError as err:
        raise VideoRejected(UNREADABLE, f"{type(err).__name__}: {err}") from None


def _rewind(src) -> None:
    if isinstance(src, io.BytesIO):
        src.seek(0)


def probe(src) -> dict:
    """Container facts from PyAV without decoding: reject absurd headers before the decoder allocates for them."""
    import av

    _rewind(src)
    try:
        with av.open(src, "r") as container:
            streams = container.streams.video
            if not streams:
                raise VideoRejected(NO_VIDEO_STREAM, "the container has no video stream")
            s = streams[0]
            raw = {"width": s.codec_context.width, "height": s.codec_context.height, "codec": s.codec_context.name,
                   "frames": s.frames, "format": container.format.name, "container_duration": container.duration,
                   "rate": s.average_rate or s.guessed_rate}
    except VideoRejected:
        raise
    except Exception as err:  # PyAV raises many types (InvalidDataError, EOFError, ...)
        raise VideoRejected(UNDECODABLE, f"{type(err).__name__}: {err}") from None
    _rewind(src)
    info = {"width": int(raw["width"] or 0), "height": int(raw["height"] or 0), "codec": raw["codec"] or "",
            "declared_frames": _declared_frames(raw), "payload_bytes": _payload_bytes(src)}
    w, h = info["width"], info["height"]
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise VideoRejected(BAD_DIMENSIONS, f"declared frame size {w}x{h}")
    blocks = -(-w // 16) * -(-h // 16)
    if info["payload_bytes"] * 8 < MIN_BITS_PER_BLOCK * blocks:
        raise VideoRejected(IMPLAUSIBLE_SIZE, f"declared frame size {w}x{h} ({blocks} blocks of 16x16) but the whole "
                                              f"file is {info['payload_bytes']} bytes: under {MIN_BITS_PER_BLOCK:g} "
                                              f"bit per block of a single frame")
    return info


def _declared_frames(raw: dict) -> int:
    """The frame count the header states: MP4/MOV's and AVI's sample count, or Matroska/WebM's duration times the
    frame rate; 0 where the format states none (MPEG-TS, raw streams: ffmpeg's figures there are estimates)."""
    if raw["frames"]:
        return int(raw["frames"])
    if raw["format"].startswith("matroska") and raw["container_duration"] and raw["rate"]:
        return int(round(raw["container_duration"] / 1e6 * float(raw["rate"])))
    return 0


def short_stream(declared: int, n: int) -> str | None:
    """The SHORT_STREAM warning when the stream holds fewer frames than its header declares (beyond rounding: 2 %
    or one frame), else None."""
    if declared and declared - n > max(1, declared // 50):
        return f"{SHORT_STREAM}: the header declares {declared} frames, the stream holds {n}"
    return None


def is_blank(frames: np.ndarray) -> bool:
    """Every sampled frame one flat colour (all of them the same one)."""
    return float(frames.reshape(-1, frames.shape[-1]).std(axis=0).max()) < BLANK_STD


def _library_steps(steps: Iterator, reason: str | None):
    """Advances a generator whose body is decoder-library calls only, turning what they raise into
    VideoRejected(reason) (or, with reason None, into one last item: the error's text)."""
    while True:
        try:
            item = next(steps)
        except StopIteration:
            return
        except Exception as err:
            if reason is None:
                yield f"{type(err).__name__}: {err}"
                return
            raise VideoRejected(reason, f"PyAV: {type(err).__name__}: {err}") from None
        yield item


def _scanned_packets(src) -> Iterator[tuple]:
    """One pass of PyAV over the video stream's packets: ("dts", packet number, dts) for every packet, and ("size",
    packet number, width, height) for each keyframe decoded (all of the first SCAN_ALL_KEYFRAMES, then every k-th, k
    growing; one thread). The other packets are demuxed, not decoded."""
    import av

    with av.open(src, "r") as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_type = "NONE"
        ctx.skip_frame = "NONKEY"
        sent: list[int] = []  # packet numbers of the keyframes sent, in order; the decoder may return them later
        n_key = packet_no = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packet_no += 1
            yield "dts", packet_no - 1, packet.dts
            if not packet.is_keyframe:
                continue
            n_key += 1
            if n_key > SCAN_ALL_KEYFRAMES and n_key % (1 + n_key // SCAN_ALL_KEYFRAMES):
                continue
            sent.append(packet_no - 1)
            for frame in ctx.decode(packet):
                yield "size", sent.pop(0), frame.width, frame.height
        for frame in ctx.decode(None):  # the frames the decoder still holds
            yield "size", (sent.pop(0) if sent else packet_no), frame.width, frame.height


@dataclass
class StreamScan:
    sizes: list[tuple[int, int, int]]  # (packet number, width, height) at each change of the frame size, first included
    jumps: list[int]  # packet numbers where the timestamps (dts) go back
    error: str | None = None  # the error PyAV stopped on (decord decoded past it)


def scan_stream(src) -> StreamScan:
    """Frame-size changes and timestamps going back, by one PyAV pass (`_scanned_packets`)."""
    scan = StreamScan(sizes=[], jumps=[])
    last_dts = None
    _rewind(src)
    for item in _library_steps(_scanned_packets(src), None):
        if isinstance(item, str):
            scan.error = item
        elif item[0] == "dts":
            if item[2] is not None and last_dts is not None and item[2] < last_dts:
                scan.jumps.append(item[1])
            last_dts = item[2] if item[2] is not None else last_dts
        elif not scan.sizes or scan.sizes[-1][1:] != item[2:]:
            scan.sizes.append(item[1:])
    _rewind(src)
    return scan


def _decoded_frames(src, spec: DecodeSpec, last: int) -> Iterator[tuple[int, np.ndarray]]:
    """(number in presentation order, RGB frame resized to spec's size) of every frame up to `last`, by PyAV."""
    import av

    with av.open(src, "r") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "NONE"
        for number, frame in enumerate(container.decode(stream)):
            yield number, frame.to_ndarray(format="rgb24", width=spec.width, height=spec.height)
            if number >= last:
                return


def frames_with_pyav(src, idx: list[int], spec: DecodeSpec) -> np.ndarray:
    """The frames `idx` decoded by PyAV, numbered in the order the stream presents them (not sorted by timestamp, as
    decord numbers them), each resized to spec's size: for a stream whose timestamps go back mid-stream."""
    out = np.zeros((len(idx), spec.height, spec.width, 3), dtype=np.uint8)
    filled = np.zeros(len(idx), dtype=bool)
    positions = np.asarray(idx)
    _rewind(src)
    for number, rgb in _library_steps(_decoded_frames(src, spec, max(idx)), FRAME_READ_FAILED):
        hit = positions == number
        out[hit] = rgb
        filled |= hit
    _rewind(src)
    if not filled.all():
        raise VideoRejected(FRAME_READ_FAILED, f"PyAV decoded {int(filled.sum())} of the {len(idx)} sampled frames")
    return out


def decode_video(uri: str, spec: DecodeSpec) -> DecodedVideo:
    """Probe, open with decord (resizing while decoding), sample, read, check. Raises VideoRejected on any bad
    input; any other exception is a bug (module docstring)."""
    import decord

    src = open_source(uri, spec.max_file_bytes)
    info = probe(src)
    try:
        vr = decord.VideoReader(src, ctx=decord.cpu(0), width=spec.width, height=spec.height, num_threads=1)
        n = len(vr)
        fps = float(vr.get_avg_fps() or 0.0)
    except Exception as err:  # DECORDError is not a RuntimeError subclass
        raise VideoRejected(UNDECODABLE, f"{type(err).__name__}: {err}") from None
    if n <= 0:
        raise VideoRejected(NO_FRAMES, "the video stream has no decodable frames")
    if n > spec.max_source_frames:
        raise VideoRejected(TOO_MANY_FRAMES, f"{n} frames > max_source_frames={spec.max_source_frames}")
    warnings = [w for w in [short_stream(info["declared_frames"], n)] if w]
    idx = sample_indices(n, fps, mode=spec.sampling, num_frames=spec.num_frames, sample_fps=spec.sample_fps)
    try:
        frames = vr.get_batch(idx).asnumpy()
    except Exception as err:
        raise VideoRejected(FRAME_READ_FAILED, f"{type(err).__name__}: {err}") from None
    del vr
    if frames.shape != (len(idx), spec.height, spec.width, 3):
        raise VideoRejected(FRAME_READ_FAILED, f"decoder returned shape {frames.shape}")
    scan = scan_stream(src)
    if scan.error:
        warnings.append(f"{STREAM_ERRORS}: PyAV's scan of the stream stopped on {scan.error}")
    if len(scan.sizes) > 1:
        steps = " -> ".join(f"{w}x{h} (from packet {p})" for p, w, h in scan.sizes)
        warnings.append(f"{RESOLUTION_CHANGE}: {steps}; every frame resized to {spec.width}x{spec.height}")
    if scan.jumps:
        warnings.append(f"{TIMESTAMP_JUMP}: the timestamps go back at packet(s) {scan.jumps[:5]}; decord orders frames "
                        f"by timestamp and seeks by it, so the sampled frames are decoded by PyAV, in stream order")
        frames = frames_with_pyav(src, idx, spec)
    if is_blank(frames):
        colour = frames.reshape(-1, 3).mean(axis=0).round().astype(int).tolist()
        detail = f"all {len(idx)} sampled frames are one flat colour (RGB {colour})"
        if spec.reject_blank:
            raise VideoRejected(BLANK_VIDEO, detail)
        warnings.append(f"{BLANK_VIDEO}: {detail}")
    duration = n / fps if fps > 0 else float("nan")
    return DecodedVideo(frames=np.ascontiguousarray(frames, dtype=np.uint8), frame_indices=idx, duration_s=duration,
                        fps=fps, n_frames=n, width=info["width"], height=info["height"], codec=info["codec"],
                        warnings=warnings)
