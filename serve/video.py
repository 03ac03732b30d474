"""Turning a request's video into frames, safely: only allow-listed files and URLs are read, sizes are bounded before
decoding, and the decoder runs in a child process (rlaif.isolation), so a video that crashes or hangs decord costs
one request a 4xx, never the replica."""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from rlaif import decode
from rlaif.config import ServeConfig
from rlaif.decode import DecodeSpec, VideoRejected, decode_video
from rlaif.isolation import ChildCrashed, ChildTimeout, IsolatedWorker
from serve.api import RequestError, parse_video_url

# Decoder verdicts that are the request's fault, by HTTP status (everything else it rejects is 400).
_STATUS = {decode.TOO_LARGE: 413, decode.MISSING: 404, decode.NOT_A_FILE: 404, decode.UNREADABLE: 403,
           decode.TOO_MANY_FRAMES: 413}


class VideoLoader:
    """One per ingress replica: one decode child process, one decode at a time."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.root = Path(cfg.allowed_video_root).resolve() if cfg.allowed_video_root else None
        self.worker = IsolatedWorker(timeout_s=cfg.decode_timeout_s, quiet=True)
        self.lock = threading.Lock()
        self.crashes = 0

    def allowed_path(self, location: str) -> str:
        if self.root is None:
            raise RequestError(403, "this server reads no local video files (serve.allowed_video_root is not set)")
        path = Path(location)
        resolved = (path if path.is_absolute() else self.root / path).resolve()  # follows symlinks and ".."
        if resolved != self.root and self.root not in resolved.parents:
            raise RequestError(403, "the video path is outside the allowed root")
        return str(resolved)

    def allowed_url(self, url: str) -> str:
        if not any(url.startswith(prefix) for prefix in self.cfg.allowed_url_prefixes):
            raise RequestError(403, "this server does not fetch that URL (not under serve.allowed_url_prefixes)")
        return url

    def load(self, url: str, num_frames: int) -> tuple[np.ndarray, float]:
        """(frames (T,H,W,3) uint8, the sampled frames' fps) or a RequestError."""
        source = parse_video_url(url, self.cfg.max_video_bytes)
        spec = DecodeSpec(num_frames=num_frames, height=self.cfg.frame_height, width=self.cfg.frame_width,
                          max_file_bytes=self.cfg.max_video_bytes, max_source_frames=self.cfg.max_source_frames)
        if source.kind == "bytes":
            fd, tmp = tempfile.mkstemp(prefix="rlaif-upload-", suffix=".video")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(source.data)
                return self._decode(tmp, spec)
            finally:
                os.unlink(tmp)
        target = self.allowed_path(source.location) if source.kind == "path" else self.allowed_url(source.location)
        return self._decode(target, spec)

    def _decode(self, uri: str, spec: DecodeSpec) -> tuple[np.ndarray, float]:
        try:
            with self.lock:
                video = self.worker.call(decode_video, uri, spec)
        except VideoRejected as err:
            raise RequestError(_STATUS.get(err.reason, 400), f"video rejected: {err}") from None
        except ChildCrashed as err:
            self.crashes += 1
            raise RequestError(400, f"video rejected: {decode.DECODER_CRASHED}: the decoder died on it ({err})") from None
        except ChildTimeout:
            raise RequestError(400, f"video rejected: {decode.TIMEOUT}: decoding took over "
                                    f"{self.cfg.decode_timeout_s:g} s") from None
        t = len(video.frames)
        fps = t / video.duration_s if video.duration_s and video.duration_s > 0 else 2.0
        return video.frames, fps

    def close(self) -> None:
        self.worker.close()
