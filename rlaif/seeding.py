"""Per-request sampling seeds derived from what a request is (prompt, sample, round), not from an engine's state.

The same request samples the same answer whichever engine replica takes it, in whatever batch, after however many
engine restarts: a stage redone after a crash, or split across a restarted engine, reproduces the uninterrupted run.
"""
from __future__ import annotations

import hashlib


def request_seed(*key: object) -> int:
    """A stable 31-bit seed for a request named by `key` (e.g. prompt_id, round, "rollout")."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()[:4], "big") >> 1


def seeded(sampling: dict, *key: object) -> dict:
    """`sampling` with the request's seed, unless it sets one itself."""
    return sampling if "seed" in sampling else {**sampling, "seed": request_seed(*key)}
