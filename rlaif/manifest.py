"""The run folder's `manifest.json`: the commit point of every stage.

A stage writes into a temporary sibling and publishes it when complete (rlaif.storage.publish), then records itself
here (status, config hash, row counts, seconds). A resumed run trusts an output only if the manifest says the stage
finished with the same config hash: a half-written output never looks finished, on a local disk or an object store.
"""
from __future__ import annotations

import os
import time
from typing import Any

from rlaif.layout import RunLayout
from rlaif.storage import RunPath


class Manifest:
    def __init__(self, run_dir: str | os.PathLike | RunPath):
        self.run_dir = RunPath.of(run_dir)
        self.path = RunLayout(self.run_dir).manifest
        self.data = self.path.read_json() if self.path.exists() else {"stages": {}}

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def is_done(self, name: str, config_hash: str) -> bool:
        s = self.stage(name)
        return s.get("status") == "done" and s.get("config_hash") == config_hash

    def record(self, name: str, status: str, config_hash: str, **info: Any) -> None:
        self.data["stages"][name] = {"status": status, "config_hash": config_hash, "at": time.time(), **info}
        self.path.write_json(self.data)

    def put(self, key: str, value: Any) -> None:
        """A run-level entry beside the stages (e.g. the engine pools' final counters), written at once."""
        self.data[key] = value
        self.path.write_json(self.data)
