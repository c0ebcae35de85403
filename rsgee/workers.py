"""Worker processes that stop with the command that started them.

Every pool of rsgee's worker processes (export ``--source synthetic``, tile, check, stats, cache) comes
from :func:`process_pool`. Its workers ignore Ctrl-C, which the terminal sends to the whole process
group: the command alone decides what an interrupt means, and idle workers would otherwise each print a
traceback. When the command stops early (an error, Ctrl-C, SIGTERM), it terminates its workers at once
instead of waiting for the tasks they run, so that none outlives it holding memory (nor the
multiprocessing resource tracker, which lives as long as a worker does).

Pools start only where a caller asks for more than one worker: spawned workers (the synthetic source's;
every pool on macOS and Windows) re-import the script that started them, which a script without
``if __name__ == "__main__":`` cannot survive. A pool that breaks so, or loses a worker to the kernel's
out-of-memory killer, ends in one line that says both.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import signal
from typing import Callable, Iterator

from rsgee.errors import RsgeeError


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    """Worker set-up: Ctrl-C is the parent's to handle; SIGTERM ends a worker as it ends any process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the command's own handler
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def process_pool(workers: int, *, mp_context=None, initializer: Callable | None = None,
                 initargs: tuple = ()) -> Iterator[cf.ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` processes, shut down on leaving the block; terminated at once
    when the block raises (or is interrupted), its queued tasks cancelled."""
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp_context, initializer=_start_worker,
                                  initargs=(initializer, initargs))
    try:
        yield pool
    except BaseException as exc:
        for process in list((pool._processes or {}).values()):  # the executor offers no terminate before 3.14
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(exc, cf.process.BrokenProcessPool):
            raise RsgeeError("a worker process ended abruptly: killed (out of memory?), or the calling script has no "
                             "`if __name__ == \"__main__\":` guard, which spawned workers need (they re-import it); "
                             "add the guard, or pass workers=1 (no worker processes)") from None
        raise
    pool.shutdown(wait=True)
