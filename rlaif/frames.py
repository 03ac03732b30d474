"""Which frames of a video to keep: uniform over the clip, or at a fixed rate.

A video LMM sees a handful of frames, not the clip. LLaVA-Hound and Qwen2-VL sample uniformly; a fixed rate keeps
temporal density constant across clips of different lengths (capped so a long clip cannot blow the budget).
"""
from __future__ import annotations

import io
import math


def uniform_indices(n_frames: int, num: int) -> list[int]:
    """`num` frame indices spread evenly from the first to the last frame (repeats when the clip is shorter)."""
    if n_frames <= 0:
        raise ValueError("video has no frames")
    if num <= 0:
        raise ValueError("num must be positive")
    if num == 1:
        return [(n_frames - 1) // 2]
    step = (n_frames - 1) / (num - 1)
    return [min(n_frames - 1, int(round(i * step))) for i in range(num)]


def fps_indices(n_frames: int, video_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Frames at `sample_fps` (at least one, at most `max_frames`, then uniform over the clip).

    Falls back to uniform sampling when the container reports no usable frame rate.
    """
    if n_frames <= 0:
        raise ValueError("video has no frames")
    if not video_fps or not math.isfinite(video_fps) or video_fps <= 0:
        return uniform_indices(n_frames, min(n_frames, max_frames))
    duration = n_frames / video_fps
    want = max(1, int(math.floor(duration * sample_fps)))
    if want > max_frames:
        return uniform_indices(n_frames, max_frames)
    step = video_fps / sample_fps
    return [min(n_frames - 1, int(i * step)) for i in range(want)]


def sample_indices(n_frames: int, video_fps: float, *, mode: str, num_frames: int, sample_fps: float) -> list[int]:
    if mode == "uniform":
        return uniform_indices(n_frames, num_frames)
    if mode == "fps":
        return fps_indices(n_frames, video_fps, sample_fps, num_frames)
    raise ValueError(f"unknown sampling mode {mode!r} (expected 'uniform' or 'fps')")


# How a videos.parquet row stores its sampled frames (ingest.frame_storage; the row's `frames_encoding` says which):
# raw uint8 RGB bytes in C order, or the T frames stacked top to bottom into one (T*H, W, 3) image, JPEG or PNG.
# One image per video rather than T: one encode and one decode call per video, and one blob as before.
RAW, JPEG, PNG = "raw", "jpeg", "png"
FRAME_ENCODINGS = (RAW, JPEG, PNG)
JPEG_MAX_SIDE = 65_500  # JPEG's limit on an image side (65535), with room
_MAGIC = {JPEG: b"\xff\xd8\xff", PNG: b"\x89PNG\r\n\x1a\n"}


def encode_frames(frames, encoding: str, jpeg_quality: int = 90) -> bytes:
    """(T, H, W, 3) uint8 RGB frames as the bytes `decode_frames` takes back. PNG is lossless; JPEG changes pixels
    (bench/frames_storage.py measures by how much). Pillow, not OpenCV: OpenCV's PNG decoder fails in a process that
    imported decord first (their bundled zlibs clash: "libpng error: bad parameters to zlib")."""
    import numpy as np
    from PIL import Image

    if encoding == RAW:
        return np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    t, h, w, c = frames.shape
    if encoding == JPEG and t * h > JPEG_MAX_SIDE:
        raise ValueError(f"{t} frames of height {h} stack to {t * h} px, over JPEG's {JPEG_MAX_SIDE}")
    image = Image.fromarray(np.ascontiguousarray(frames, dtype=np.uint8).reshape(t * h, w, c), "RGB")
    out = io.BytesIO()
    if encoding == JPEG:
        # No chroma subsampling (4:4:4, subsampling=0): the default 4:2:0 halves colour resolution, and a small
        # object's colour is what a question asks about (on 4 synthetic clips at quality 90, 4:2:0 was off by up to 226
        # levels, PSNR down to 31 dB; 4:4:4 by at most 41, PSNR 41 dB or more, for 1.5x the bytes).
        image.save(out, "JPEG", quality=jpeg_quality, subsampling=0)
    elif encoding == PNG:
        # zlib level 1: on a real 8x112x112 clip levels 3 to 9 were 1-2.5% smaller for 3x the encode time.
        image.save(out, "PNG", compress_level=1)
    else:
        raise ValueError(f"unknown frames encoding {encoding!r} (expected one of {FRAME_ENCODINGS})")
    return out.getvalue()


def sniff_encoding(data: bytes, shape) -> str:
    """The encoding of frame bytes whose row does not say (a caller that read only frames and frames_shape): raw
    bytes are exactly T*H*W*3 long, an image starts with its format's signature."""
    if len(data) == math.prod(shape):
        return RAW
    for encoding, magic in _MAGIC.items():
        if data[: len(magic)] == magic:
            return encoding
    raise ValueError(f"frames of {len(data)} bytes are neither raw {tuple(shape)} uint8 nor a JPEG or PNG image")


def decode_frames(data: bytes, shape, encoding: str | None = None):
    """(T, H, W, 3) uint8 RGB frames from `encode_frames`'s bytes (encoding None: sniffed)."""
    import numpy as np

    shape = tuple(shape)
    encoding = encoding or sniff_encoding(data, shape)
    if encoding == RAW:
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if encoding not in (JPEG, PNG):
        raise ValueError(f"unknown frames encoding {encoding!r} (expected one of {FRAME_ENCODINGS})")
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.format != encoding.upper() or image.mode != "RGB":
            raise ValueError(f"{encoding} frames hold a {image.format} {image.mode} image")
        pixels = np.asarray(image)
    if pixels.shape != (shape[0] * shape[1], shape[2], shape[3]):
        raise ValueError(f"{encoding} frames do not decode to {shape}: got {pixels.shape}")
    return pixels.reshape(shape)
