"""The run folder's `manifest.json` and atomic publishing of stage outputs.

A stage writes into a temporary sibling and renames it into place only when complete, then records itself in the
manifest (status, config hash, row counts, seconds). A resumed run trusts an output only if the manifest says the
stage finished with the same config hash: a half-written file never looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def staging_path(final: Path) -> Path:
    """A unique hidden sibling of `final` to write into before `publish`."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")


def publish(staged: Path, final: Path) -> None:
    """Move a completed output into place, replacing an older one (the old one is moved aside first, then deleted)."""
    if final.exists():
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(staged, final)


def clean_partials(run_dir: Path) -> int:
    """Remove leftovers of stages killed while writing. Returns how many were removed."""
    n = 0
    for p in run_dir.rglob(".*.partial"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def is_done(self, name: str, config_hash: str) -> bool:
        s = self.stage(name)
        return s.get("status") == "done" and s.get("config_hash") == config_hash

    def record(self, name: str, status: str, config_hash: str, **info: Any) -> None:
        self.data["stages"][name] = {"status": status, "config_hash": config_hash, "at": time.time(), **info}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)
