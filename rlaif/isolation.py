"""Run risky calls (native decoders on untrusted files) in a child process that may die without taking us along.

A `IsolatedWorker` keeps one long-lived child (spawned, so no locks or threads are inherited from the parent)
and sends it one call at a time over a pipe. If the child segfaults, is killed, or overruns the timeout, the call
raises `ChildCrashed` / `ChildTimeout`, the child is replaced, and the parent carries on with the next call.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from typing import Any, Callable


class ChildCrashed(RuntimeError):
    def __init__(self, exitcode: int | None):
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"killed by signal {-exitcode}"
        else:
            how = f"exited with code {exitcode}"
        super().__init__(f"child process {how}")


class ChildTimeout(TimeoutError):
    pass


class RemoteError(Exception):
    """An ordinary exception raised by the call in the child that could not be pickled back as itself."""


def _serve(conn, quiet: bool) -> None:
    if quiet:  # native decoders print a line per corrupt packet; the failure itself comes back as an exception
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        fn, args, kwargs = msg
        try:
            conn.send(("ok", fn(*args, **kwargs)))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            try:
                conn.send(("err", err))
            except Exception:  # the exception itself does not pickle
                conn.send(("err", RemoteError(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")))


class IsolatedWorker:
    def __init__(self, timeout_s: float = 60.0, start_method: str = "spawn", quiet: bool = False):
        self.timeout_s = timeout_s
        self.quiet = quiet
        self._ctx = mp.get_context(start_method)
        self._proc = None
        self._conn = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child, self.quiet), daemon=True, name="rlaif-isolated")
        self._proc.start()
        child.close()
        self._conn = parent

    def _discard(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=10)
            self._conn.close()
        self._proc = self._conn = None

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """fn(*args, **kwargs) in the child. `fn` must be importable by name (a module-level function)."""
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._discard()
                self.restarts += 1
            self._start()
        try:
            self._conn.send((fn, args, kwargs))
            ready = self._conn.poll(self.timeout_s)
            if not ready:
                self._discard()
                self.restarts += 1
                raise ChildTimeout(f"no result within {self.timeout_s:g} s; child killed")
            status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(timeout=10)
            code = self._proc.exitcode
            self._discard()
            self.restarts += 1
            raise ChildCrashed(code) from None
        if status == "err":
            raise value
        return value

    def close(self) -> None:
        self._discard()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
