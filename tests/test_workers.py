"""Worker pools stop with their command: terminated at once when it stops early, Ctrl-C left to it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rsgee.errors import RsgeeError
from rsgee.workers import process_pool


def test_workers_leave_ctrl_c_to_the_command_and_die_of_sigterm():
    with process_pool(1) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
        assert pool.submit(signal.getsignal, signal.SIGTERM).result() == signal.SIG_DFL


def test_a_pool_left_by_an_exception_terminates_its_busy_workers_at_once():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the command failed"):
        with process_pool(2) as pool:
            futures = [pool.submit(time.sleep, 60) for _ in range(4)]
            workers = list(pool._processes.values())
            raise RuntimeError("the command failed")
    assert time.monotonic() - started < 30  # not the 120 s of sleeps the workers had queued
    assert len(workers) == 2 and not any(worker.is_alive() for worker in workers)
    assert all(future.done() for future in futures)


def test_a_worker_that_dies_is_one_line_naming_the_likely_causes():
    with pytest.raises(RsgeeError, match=r"a worker process ended abruptly: .*`if __name__ == \"__main__\":` guard"):
        with process_pool(1) as pool:
            pool.submit(os._exit, 1).result()
