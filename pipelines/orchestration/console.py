"""The console of the commands that run pipeline work (demo, run, experiment, judge-audit, ingest).

Quiet, the default: the console shows one line per stage (a live bar on a terminal; without one, e.g. under
`ray job submit` or with stdout sent to a file, a plain line every PLAIN_EVERY_S seconds and one when the stage
ends), the command's own summary, and a failed stage's error in one short block; every library's output goes to the
folder's logs/driver.log (rlaif.layout.LogsLayout). `-v`: everything on the console as before, and the Python log
records in logs/driver.log too.

How quiet mode captures the libraries: before Ray starts, file descriptors 1 and 2 are duplicated for the console's
own use and then pointed at logs/driver.log. Whatever writes to them then writes to the log: Python logging (the
root handler writes to sys.stderr), warnings, C++ code writing to the descriptors (Ray core), the child processes
started from then on (a local Ray node inherits the file, not the terminal), and the workers' and engines' output
that Ray forwards to the driver. The job log of `ray job submit` is the driver's stdout: the console's lines go there.

Rows done per stage come from actors.progress (counted by the workers); stages are announced by the stage runner
(pipelines.orchestration.resume.Stages) through `stage` and `skipped`.
"""
from __future__ import annotations

import builtins
import itertools
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO

from rlaif.layout import LogsLayout
from rlaif.storage import RunPath

log = logging.getLogger(__name__)

PLAIN_EVERY_S = 30.0  # without a terminal: a progress line this often while a stage runs (and one at its end)
BAR_REFRESH_S = 0.5  # on a terminal: how often the live bar is redrawn
LABEL_WIDTH = 22  # stage names are padded to this, so that the figures of most lines line up


def duration(seconds: float) -> str:
    """45s, 1m17s, 2h03m: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int | None, elapsed: float, unit: str = "rows") -> str:
    """A running stage without a terminal: 'round_0/rollout_judge  240/480 rows  3.1 rows/s  ETA 1m17s'.
    The ETA assumes the rate so far holds; with no rows yet, or no total, there is none; a stage that counts
    nothing (no total, no rows) only says how long it has run."""
    if total is None and not done:
        return f"{label.ljust(LABEL_WIDTH)}  running, {duration(elapsed)} so far"
    counts = f"{done}/{total} {unit}" if total is not None else f"{done} {unit}"
    parts = [label.ljust(LABEL_WIDTH), counts, rate(done, elapsed, unit),
             f"ETA {duration((total - done) * elapsed / done)}" if total is not None and 0 < done < total else
             f"{duration(elapsed)} so far"]
    return "  ".join(p for p in parts if p)


def rate(done: int, elapsed: float, unit: str) -> str:
    """'3.1 rows/s', or for slow stages (training steps) '10.2 s/step': tqdm's way, never '0.0 steps/s'."""
    if not done or elapsed <= 0:
        return ""
    per_second = done / elapsed
    return f"{per_second:.1f} {unit}/s" if per_second >= 1 else f"{elapsed / done:.1f} s/{unit.removesuffix('s')}"


def done_line(label: str, done: int | None, total: int | None, elapsed: float, unit: str = "rows") -> str:
    """A finished stage: 'ingest  34/34 videos  done in 18s'; without a declared total, 'questions  done in 0s'."""
    counts = f"{done if done is not None else '?'}/{total} {unit}  " if total is not None else ""
    return f"{label.ljust(LABEL_WIDTH)}  {counts}done in {duration(elapsed)}"


def short_error(err: BaseException) -> str:
    """'KeyError: 'sampling_mode'': the innermost cause (a worker's exception inside Ray's wrappers) and the first
    line of its message, at most 500 characters; the traceback is the log's."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None)  # ray.exceptions.RayTaskError: the worker's own exception
        inner = inner if isinstance(inner, BaseException) else err.__cause__
        if inner is None:
            break
        err = inner
    lines = str(err).strip().splitlines()
    message = lines[0] if lines else ""
    name = type(err).__name__
    if "(" in name and name.endswith(")"):  # RayTaskError(KeyError): the cause's own class name
        name = name[name.index("(") + 1:-1]
    return f"{name}: {message[:500]}" if message else name


class Console:
    """One command's console; `start` makes it quiet (unless verbose) once the folder, and so logs/, is known."""

    def __init__(self, command: str, verbose: bool = False):
        self.command, self.verbose = command, verbose
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self.quiet = False
        self.interactive = False
        self.root: str | None = None  # the command's folder: stage names of folders below it are prefixed
        self.log_path: Path | None = None  # logs/driver.log on this machine
        self.upload_to: RunPath | None = None  # an object-store folder's driver.log (written at close)
        self.failed_stage: str | None = None
        self._lock = threading.RLock()
        self._saved_fds: tuple[int, int] | None = None
        self._file_handler: logging.Handler | None = None
        self._labels: dict[str, str] = {}
        self._seq = itertools.count()
        self._bar = None
        self._bar_key: str | None = None
        self._last_plain: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- setup and teardown -----------------------------------------------------------------------------------
    def start(self, folder: RunPath | str, logs: RunPath) -> None:
        """From now on (quiet) the libraries' output goes to `logs`/driver.log; `folder` is the command's folder."""
        folder, logs = RunPath.of(folder), RunPath.of(logs)
        self.root = str(folder)
        if logs.is_local:
            logs.mkdir()
            self.log_path = LogsLayout(logs).driver.local
        else:  # an object store cannot be appended to: a local file, uploaded when the command ends
            self.log_path = LogsLayout(tempfile.mkdtemp(prefix="rlaif-logs-")).driver.local
            self.upload_to = LogsLayout(logs).driver
        if self.verbose:
            self._file_handler = logging.FileHandler(self.log_path)
            self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                                              "%H:%M:%S"))
            logging.getLogger().addHandler(self._file_handler)
            return
        self._redirect()
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # the forwarded workers' prefixes: plain text in a file
        self.quiet = True
        self.interactive = self.out.isatty() and _columns(self.out) > 0  # a 0-column pty would get empty bars
        self._quiet_libraries()
        from actors.progress import PROGRESS

        PROGRESS.enabled = True
        where = f"{self.log_path} (copied to {self.upload_to} at the end)" if self.upload_to else str(self.log_path)
        self.write(f"rlaif {self.command}: {folder}; the libraries' logs: {where} (rlaif -v shows them here)")
        self._thread = threading.Thread(target=self._poll, name="rlaif-console", daemon=True)
        self._thread.start()

    def _redirect(self) -> None:
        """fds 1 and 2 to the log; the console keeps the terminal (or the job log) on duplicates of them."""
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"\n===== rlaif {self.command} ({' '.join(sys.argv[1:])}) started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self._saved_fds = saved
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self.out = open(saved[0], "w", buffering=1, encoding=encoding, errors="replace", closefd=False)
        self.err = open(saved[1], "w", buffering=1, encoding=encoding, errors="replace", closefd=False)

    @staticmethod
    def _quiet_libraries() -> None:
        """Ray Data's own progress bars would only fill the log: off (its executor's log lines stay in the log)."""
        from ray.data import DataContext

        ctx = DataContext.get_current()
        for option in ("enable_progress_bars", "enable_operator_progress_bars"):
            if hasattr(ctx, option):
                setattr(ctx, option, False)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._close_bar()
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
        if self.quiet:
            from actors.progress import PROGRESS

            PROGRESS.enabled = False
            import ray

            workers = ray_worker_logs() if ray.is_initialized() else []
            if ray.is_initialized():  # now, not at exit: Ray's last words (actors killed, ...) go to the log too
                ray.shutdown()
            self._keep_worker_logs(workers)
            sys.stdout.flush()
            sys.stderr.flush()
            out_fd, err_fd = self._saved_fds
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            for handle, fd in ((self.out, out_fd), (self.err, err_fd)):
                handle.flush()
                handle.close()
                os.close(fd)
            self.out, self.err, self.quiet = sys.stdout, sys.stderr, False
        if self.upload_to is not None and self.log_path.exists():
            self.upload_to.copy_from(self.log_path)

    def _keep_worker_logs(self, files: list[Path]) -> None:
        """This command's workers' own output files (complete once Ray has shut them down) into logs/workers/."""
        if not files or self.log_path is None:
            return
        dest = LogsLayout(self.upload_to.parent if self.upload_to is not None else self.log_path.parent).workers
        dest.mkdir()
        for f in files:
            if f.exists() and f.stat().st_size:
                (dest / f.name).copy_from(f)

    # ---- what the console shows ---------------------------------------------------------------------------------
    def write(self, line: str, err: bool = False) -> None:
        with self._lock:
            if self._bar is not None:  # a line above the live bar, which is redrawn below it
                self._bar.clear()
            print(line, file=self.err if err else self.out, flush=True)
            if self._bar is not None:
                self._bar.refresh()

    def label(self, name: str, folder: RunPath | str | None) -> str:
        """The stage's name, prefixed by its folder below the command's (an experiment's seeds and arms)."""
        where = str(folder) if folder is not None else None
        if not where or not self.root or where == self.root:
            return name
        rel = where[len(self.root):].lstrip("/") if where.startswith(self.root + "/") else where
        return f"{rel}: {name}"

    @contextmanager
    def stage(self, name: str, folder: RunPath | str | None = None):
        """A stage running: its live line, then its done line (or FAILED, and the name the error block gives)."""
        from actors.progress import PROGRESS

        label = self.label(name, folder)
        progress = PROGRESS.begin(f"{next(self._seq)}:{label}")
        self._labels[progress.key] = label
        self._last_plain[progress.key] = time.monotonic()
        try:
            yield progress
        except BaseException:
            self.failed_stage = self.failed_stage or label  # the innermost stage is the first to see it
            self._finish(progress, failed=True)
            raise
        else:
            self._finish(progress)
        finally:
            PROGRESS.end()

    def skipped(self, name: str, folder: RunPath | str | None = None) -> None:
        self.write(f"{self.label(name, folder).ljust(LABEL_WIDTH)}  done already")

    def _finish(self, progress, failed: bool = False) -> None:
        from actors.progress import PROGRESS

        done = PROGRESS.done_rows(progress.key) if progress.total is not None else None
        elapsed = time.monotonic() - progress.started
        label = self._labels.pop(progress.key)
        with self._lock:
            if self._bar_key == progress.key:
                self._close_bar()
            if failed:
                self.write(f"{label.ljust(LABEL_WIDTH)}  FAILED after {duration(elapsed)}")
            else:
                self.write(done_line(label, done, progress.total, elapsed, progress.unit))

    def failed(self, err: BaseException) -> bool:
        """A quiet console reports an exception that ends the command in one short block naming the stage and the
        log, which gets the traceback; returns False when not quiet (the caller reports it as before)."""
        if not self.quiet:
            return False
        traceback.print_exception(err, file=sys.stderr)  # fd 2: the log
        sys.stderr.flush()
        where = f"stage {self.failed_stage}" if self.failed_stage else f"rlaif {self.command}"
        log_file = f"{self.log_path}" + (f" (copied to {self.upload_to})" if self.upload_to else "")
        self.write(f"rlaif: {where} failed: {short_error(err)}\n  the traceback and every library's log: {log_file}",
                   err=True)
        return True

    # ---- the live line --------------------------------------------------------------------------------------------
    def _poll(self) -> None:
        every = BAR_REFRESH_S if self.interactive else 1.0
        while not self._stop.wait(every):
            try:
                self._tick()
            except Exception as err:  # noqa: BLE001 - the console must never end the run
                log.debug("console: %s", err)

    def _tick(self) -> None:
        from actors.progress import PROGRESS

        progress = PROGRESS.stage
        if progress is None:
            return
        done = PROGRESS.done_rows(progress.key) or 0  # outside the lock: the board may be slow to answer
        label = self._labels.get(progress.key)
        if label is None:  # it ended meanwhile
            return
        elapsed = time.monotonic() - progress.started
        with self._lock:
            if PROGRESS.stage is not progress:
                return
            if self.interactive:
                self._draw(progress, label, done)
            elif time.monotonic() - self._last_plain[progress.key] >= PLAIN_EVERY_S:
                self._last_plain[progress.key] = time.monotonic()
                print(progress_line(label, done, progress.total, elapsed, progress.unit), file=self.out, flush=True)

    def _draw(self, progress, label: str, done: int) -> None:
        from tqdm import tqdm

        # A stage that counts nothing (yet) shows how long it runs, not "0 rows, ? rows/s".
        bar_format = "{desc}  {elapsed}" if progress.total is None and not done else None
        if self._bar_key != progress.key:
            self._close_bar()
            # smoothing 0: the rate (and ETA) is the stage's average since it started, as on the plain lines.
            self._bar = tqdm(total=progress.total, desc=label, unit=f" {progress.unit}", file=self.out, leave=False,
                             dynamic_ncols=True, mininterval=0, smoothing=0, bar_format=bar_format)
            self._bar.start_t = time.time() - (time.monotonic() - progress.started)  # the stage's start, not the bar's
            self._bar_key = progress.key
        self._bar.total = progress.total
        self._bar.bar_format = bar_format
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_key = None, None


def ray_worker_logs() -> list[Path]:
    """The stdout/stderr files that Ray keeps of this job's workers on this node (`worker-<id>-<job>-<pid>.out|err`).
    Ray forwards their lines to the driver as they come, but best-effort: lines still unread when the driver shuts
    down are lost, which on a loaded machine can be a whole engine's start-up."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # (None: a Ray Client connection, nothing local)
    if node is None:
        return []
    job = ray.get_runtime_context().get_job_id()
    logs = Path(node.get_logs_dir_path())
    return sorted([*logs.glob(f"worker-*-{job}-*.out"), *logs.glob(f"worker-*-{job}-*.err")])


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except OSError:
        return 0


_ACTIVE: Console | None = None


@contextmanager
def session(command: str, verbose: bool = False):
    """The console of one command, closed (descriptors restored, logs uploaded) however the command ends."""
    global _ACTIVE
    console = Console(command, verbose)
    _ACTIVE = console
    try:
        yield console
    finally:
        _ACTIVE = None
        console.close()


def stage(name: str, folder: RunPath | str | None = None):
    """The stage runner's hook: the quiet console's line for this stage (nothing without one)."""
    return _ACTIVE.stage(name, folder) if _ACTIVE is not None and _ACTIVE.quiet else nullcontext()


def skipped(name: str, folder: RunPath | str | None = None) -> None:
    if _ACTIVE is not None and _ACTIVE.quiet:
        _ACTIVE.skipped(name, folder)


def echo(*args, file=None, **kwargs) -> None:
    """print() that reaches the console: a quiet console's stdout (or stderr) rather than the log."""
    console = _ACTIVE
    if console is not None and console.quiet and file in (None, sys.stdout, sys.stderr):
        console.write((kwargs.get("sep") or " ").join(str(a) for a in args), err=file is sys.stderr)
        return
    builtins.print(*args, file=file, **kwargs)
