"""Turning a request's video into frames, safely: only allow-listed files and URLs are read (URLs compared as
normalised URLs, serve/urls.py), sizes are bounded before decoding, and fetching and decoding run in child processes
(rlaif.isolation), so a video that crashes or hangs decord costs one request a 4xx, never the replica.

Each ingress replica has a `DecodePool`: `serve.decode_workers` child processes, each fetching and decoding one
video at a time, and room for `serve.decode_queue` requests waiting for a free one. A slow fetch or decode holds
one child, not the replica; a request that finds every child busy and the queue full is answered 503 (with
Retry-After) at once instead of waiting behind them.
"""
from __future__ import annotations

import asyncio
import os
import queue
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlaif import decode
from rlaif.config import ServeConfig
from rlaif.decode import DecodeSpec, VideoRejected, decode_video
from rlaif.isolation import ChildCrashed, ChildTimeout, IsolatedWorker
from serve.api import RequestError, parse_video_url
from serve.fetch import fetch_and_decode, warm_up
from serve.urls import AllowList, URLRefused

# Decoder verdicts that are the request's fault, by HTTP status (everything else it rejects is 400).
_STATUS = {decode.TOO_LARGE: 413, decode.MISSING: 404, decode.NOT_A_FILE: 404, decode.UNREADABLE: 403,
           decode.TOO_MANY_FRAMES: 413}


class PoolBusy(RuntimeError):
    """Every decode child is busy and the wait queue is full."""


class DecodePool:
    """`workers` isolated child processes, one call each at a time, and room for `queue` calls waiting for one.

    `submit` never blocks: it either takes the call (a concurrent Future) or raises PoolBusy. A call's thread holds
    its child until the child answers, dies or overruns `timeout_s` (then it is killed and replaced), so a slot is
    freed only when its child is really free, even if the request that asked for it has gone."""

    def __init__(self, workers: int, queue_size: int, timeout_s: float):
        self.workers, self.limit = workers, workers + queue_size
        self._idle: queue.SimpleQueue[IsolatedWorker] = queue.SimpleQueue()
        self._all = [IsolatedWorker(timeout_s=timeout_s, quiet=True) for _ in range(workers)]
        for w in self._all:
            self._idle.put(w)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="rlaif-decode")
        self._lock = threading.Lock()
        self.pending = 0  # running + waiting
        self.busy_refusals = 0

    def submit(self, fn: Callable, *args) -> Future:
        with self._lock:
            if self.pending >= self.limit:
                self.busy_refusals += 1
                raise PoolBusy(f"all {self.workers} decoders busy and {self.limit - self.workers} requests waiting")
            self.pending += 1
        try:
            future = self._threads.submit(self._run, fn, args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _) -> None:
        with self._lock:
            self.pending -= 1

    def _run(self, fn: Callable, args: tuple) -> Any:
        worker = self._idle.get_nowait()  # as many threads as children: one is always idle here
        try:
            return worker.call(fn, *args)
        finally:
            self._idle.put(worker)

    async def run(self, fn: Callable, *args) -> Any:
        """`submit`, awaited (PoolBusy at once when full)."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def warm(self, fn: Callable) -> list[Future]:
        """Starts every child now (each runs `fn`), so the first requests do not pay for their start-up."""
        return [self.submit(fn) for _ in range(self.workers)]

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self._all)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        for w in self._all:
            w.close()


@dataclass
class _Job:
    fn: Callable
    args: tuple
    temp: str | None = None  # a file to delete afterwards


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class VideoLoader:
    """One per ingress replica: checks what a request names, then fetches and decodes it in the DecodePool."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.root = Path(cfg.allowed_video_root).resolve() if cfg.allowed_video_root else None
        self.allow = AllowList(cfg.allowed_url_prefixes)
        self.pool = DecodePool(cfg.decode_workers, cfg.decode_queue, cfg.decode_timeout_s)
        self._tmp: str | None = None
        self.crashes = 0

    @property
    def tmp(self) -> str:
        """A folder for uploads and fetched URLs, one file per request (made on first use)."""
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="rlaif-serve-")
        return self._tmp

    def allowed_path(self, location: str) -> str:
        if self.root is None:
            raise RequestError(403, "this server reads no local video files (serve.allowed_video_root is not set)")
        path = Path(location)
        resolved = (path if path.is_absolute() else self.root / path).resolve()  # follows symlinks and ".."
        if resolved != self.root and self.root not in resolved.parents:
            raise RequestError(403, "the video path is outside the allowed root")
        return str(resolved)

    def allowed_url(self, url: str) -> str:
        """The normalised URL that will be fetched, or a 400/403 RequestError."""
        try:
            return str(self.allow.check(url))
        except URLRefused as err:
            raise RequestError(err.status, str(err)) from None

    def _temp(self) -> str:
        fd, path = tempfile.mkstemp(dir=self.tmp, suffix=".video")
        os.close(fd)
        return path

    def _job(self, url: str, num_frames: int) -> _Job:
        """What the child will do for this video (uploads written to a temp file first); checks that need no child."""
        source = parse_video_url(url, self.cfg.max_video_bytes)
        spec = DecodeSpec(num_frames=num_frames, height=self.cfg.frame_height, width=self.cfg.frame_width,
                          max_file_bytes=self.cfg.max_video_bytes, max_source_frames=self.cfg.max_source_frames)
        if source.kind == "bytes":
            path = self._temp()
            with open(path, "wb") as f:
                f.write(source.data)
            return _Job(decode_video, (path, spec), path)
        if source.kind == "path":
            return _Job(decode_video, (self.allowed_path(source.location), spec))
        target = self.allowed_url(source.location)
        path = self._temp()  # named here, so it is removed even when the child is killed mid-fetch
        return _Job(fetch_and_decode, (target, self.cfg.allowed_url_prefixes, path, spec, self.cfg.decode_timeout_s),
                    path)

    async def load(self, url: str, num_frames: int) -> tuple[np.ndarray, float]:
        """(frames (T,H,W,3) uint8, the sampled frames' fps) or a RequestError."""
        prep = asyncio.get_running_loop().run_in_executor(None, self._job, url, num_frames)
        try:
            job = await asyncio.shield(prep)
        except asyncio.CancelledError:  # the request went away while its upload was being written
            prep.add_done_callback(lambda f: f.cancelled() or f.exception() or _remove(f.result().temp))
            raise
        try:
            future = self.pool.submit(job.fn, *job.args)
        except PoolBusy as err:
            _remove(job.temp)
            raise RequestError(503, f"the server is busy decoding other videos ({err}); retry shortly",
                               "server_overloaded") from None
        if job.temp:  # removed once the child is done with it (answered, killed, or never started)
            future.add_done_callback(lambda _: _remove(job.temp))
        try:
            video = await asyncio.wrap_future(future)
        except VideoRejected as err:
            raise RequestError(_STATUS.get(err.reason, 400), f"video rejected: {err}") from None
        except URLRefused as err:  # a redirect to a URL outside the allow-list
            raise RequestError(err.status, str(err)) from None
        except ChildCrashed as err:
            self.crashes += 1
            raise RequestError(400, f"video rejected: {decode.DECODER_CRASHED}: the decoder died on it ({err})") from None
        except ChildTimeout:
            raise RequestError(400, f"video rejected: {decode.TIMEOUT}: fetching and decoding took over "
                                    f"{self.cfg.decode_timeout_s:g} s") from None
        t = len(video.frames)
        fps = t / video.duration_s if video.duration_s and video.duration_s > 0 else 2.0
        return video.frames, fps

    def warm(self) -> None:
        """Starts the decode children in the background (they import the decoders once, before the first video)."""
        self.pool.warm(warm_up)

    def close(self) -> None:
        self.pool.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
