"""Rows done per stage, counted where the work is done and read by the driver's console
(pipelines.orchestration.console), so that a stage shows how far it is and how long it still takes.

    begin("round_0/rollout_judge")       # the stage runner (pipelines.orchestration.resume.Stages)
    expect(480, "answers")               # the stage: the rows it will write
    write_parquet(counted(ds))           # the stage's datasets count their rows as they are written (a zero-CPU
                                         #   map before Ray Data's write, which gathers blocks into files)
    job.progress = counter(); ...        # or a worker counts what it does (Ray Train's rank 0: steps)
    done_rows()                          # the console, polling

Workers report to one small actor (`ProgressBoard`) without waiting for it. Nothing is counted, and no actor started,
unless a console `enable`s it: library users and the tests that call run_pipeline get the plain datasets.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import ray

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Rows done, by stage name (an actor: Ray Data workers and Ray Train workers anywhere in the cluster reach it)."""

    def __init__(self):
        self._done: dict[str, int] = {}

    def add(self, key: str, n: int) -> None:
        self._done[key] = self._done.get(key, 0) + n

    def done(self, key: str) -> int:
        return self._done.get(key, 0)


@dataclass
class RowCounter:
    """What a worker holds: the board and the stage to count for. As a Ray Data batch function it counts each batch's
    rows and passes the batch on unchanged."""

    board: object  # ProgressBoard's handle
    key: str

    def add(self, n: int) -> None:
        try:
            self.board.add.remote(self.key, int(n))  # not waited for: progress must never slow or fail the work
        except Exception as err:  # noqa: BLE001 - a lost board only stops the counting
            log.debug("progress of %s not counted: %s", self.key, err)

    def __call__(self, batch):
        self.add(batch.num_rows)
        return batch


@dataclass
class StageProgress:
    """The driver's view of the running stage: its name, the rows it declared (None: unknown), and since when."""

    key: str
    total: int | None = None
    unit: str = "rows"
    started: float = field(default_factory=time.monotonic)


class Progress:
    """The driver's registry: the running stage and the board its workers count on (started on first use)."""

    def __init__(self):
        self.enabled = False
        self.board = None
        self._running: list[StageProgress] = []  # a stack: a stage may run stages of its own (an experiment's)
        self._lock = threading.Lock()

    @property
    def stage(self) -> StageProgress | None:
        """The innermost running stage."""
        return self._running[-1] if self._running else None

    def begin(self, key: str) -> StageProgress:
        with self._lock:
            self._running.append(StageProgress(key))
            return self._running[-1]

    def end(self) -> StageProgress | None:
        with self._lock:
            return self._running.pop() if self._running else None

    def expect(self, n: int, unit: str | None = None) -> None:
        """The running stage will write `n` more rows (a stage that writes two tables one after the other, e.g.
        answers then judgments, declares each as it starts it)."""
        with self._lock:
            if self.stage is not None:
                self.stage.total = (self.stage.total or 0) + int(n)
                self.stage.unit = unit or self.stage.unit

    def counter(self) -> RowCounter | None:
        """A counter for the running stage's workers; None when nothing is shown (no console, no stage, no Ray)."""
        if not (self.enabled and self.stage is not None and ray.is_initialized()):
            return None
        with self._lock:
            if self.board is None:
                self.board = ProgressBoard.remote()
            return RowCounter(self.board, self.stage.key)

    def done_rows(self, key: str, timeout_s: float = 5.0) -> int | None:
        """Rows the workers counted for `key` so far (None: the board did not answer, or there is none)."""
        if self.board is None:
            return None
        try:
            return ray.get(self.board.done.remote(key), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a slow or lost board: the line keeps its last count
            return None


PROGRESS = Progress()


def expect(n: int, unit: str | None = None) -> None:
    PROGRESS.expect(n, unit)


def counter() -> RowCounter | None:
    return PROGRESS.counter()


def counted(ds: "ray.data.Dataset") -> "ray.data.Dataset":
    """`ds` with its rows counted for the running stage as they pass (unchanged when nothing is shown). The count is
    a zero-CPU operator of its own: fused into the next task-based operator it would count only when that operator
    runs, and a write that gathers blocks into files runs once it has a file's rows."""
    count = PROGRESS.counter()
    if count is None:
        return ds
    return ds.map_batches(count, batch_size=None, batch_format="pyarrow", zero_copy_batch=True, num_cpus=0)
