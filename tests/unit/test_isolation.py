"""The child-process guard with real processes: a segfault or hang in the child costs one call, never the caller."""
import os
import signal
import time

import pytest

from rlaif.isolation import ChildCrashed, ChildTimeout, IsolatedWorker


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def sleep_forever():
    time.sleep(3600)


def fail():
    raise KeyError("boom")


def pid():
    return os.getpid()


def test_results_and_exceptions_come_back():
    with IsolatedWorker(timeout_s=30) as w:
        assert w.call(pow, 2, 10) == 1024
        with pytest.raises(KeyError, match="boom"):
            w.call(fail)
        assert w.call(pid) != os.getpid()
        assert w.restarts == 0  # an ordinary exception keeps the child


def test_segfault_becomes_an_exception_and_the_worker_recovers():
    with IsolatedWorker(timeout_s=30) as w:
        first = w.call(pid)
        with pytest.raises(ChildCrashed, match="SIGSEGV"):
            w.call(segfault)
        assert w.call(pow, 3, 2) == 9  # a fresh child took over
        assert w.call(pid) != first and w.restarts == 1


def test_hang_is_killed_after_the_timeout():
    with IsolatedWorker(timeout_s=1.5) as w:
        t = time.time()
        with pytest.raises(ChildTimeout):
            w.call(sleep_forever)
        assert time.time() - t < 15
        assert w.call(pow, 2, 3) == 8
