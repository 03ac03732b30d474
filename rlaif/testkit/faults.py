"""Fault injection for tests and drills: decoders and inputs that fail the way real ones do.

Never used unless a config names it (e.g. `ingest.decoder: rlaif.testkit.faults:decode_with_faults`).
"""
from __future__ import annotations

import os
import signal
import time

from rlaif.decode import DecodedVideo, DecodeSpec, decode_video

CRASH_MARK = "inject-segfault"  # a file whose name contains this kills its decoder with SIGSEGV
HANG_MARK = "inject-hang"  # ... or makes it hang forever
SLOW_MARK = "inject-slow"  # ... or take SLOW_DECODE_S longer (a slow disk or a long clip: shows stages overlapping)
BUG_MARK = "inject-bug"  # ... or raise a KeyError from our own code, as a bug would (quarantined as internal_error)
SLOW_DECODE_S = 1.5


def decode_with_faults(uri: str, spec: DecodeSpec) -> DecodedVideo:
    name = os.path.basename(uri)
    if CRASH_MARK in name:
        os.kill(os.getpid(), signal.SIGSEGV)  # the same death as decord's memcpy fault on corrupt input
    if HANG_MARK in name:
        while True:
            time.sleep(3600)
    if SLOW_MARK in name:
        time.sleep(SLOW_DECODE_S)
    video = decode_video(uri, spec)  # a real decode first: the bug is in what our code does with its result
    if BUG_MARK in name:
        return _buggy_postprocess(video)
    return video


def _buggy_postprocess(video: DecodedVideo) -> DecodedVideo:
    """A stand-in for a bug in our code after a successful decode: a lookup of a key nothing ever sets."""
    video.extra["sampling"] = video.extra["sampling_mode"]  # KeyError: 'sampling_mode'
    return video
