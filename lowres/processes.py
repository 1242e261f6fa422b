"""Processes and locks: worker pools that die with their parent, and per-entry file locks.

Two jobs every long-running command shares:

- :func:`run_parallel`: a spawn-context process pool whose workers end when the process that
  started them ends, however it ends (SIGKILL included): on Linux each worker asks the kernel
  for SIGKILL at its parent's death (``PR_SET_PDEATHSIG``); everywhere a watchdog thread also
  exits the worker once its parent is gone. A killed sweep leaves nothing running, and with no
  worker left the multiprocessing resource tracker reads end-of-file and exits too.
- :func:`file_lock`: an exclusive ``flock`` on a lock file, for entries that concurrent
  processes share (a model cache entry, a sweep's output folder). A second process waits,
  saying once whom it waits for; the kernel releases the lock when its holder dies, so a killed
  holder never leaves a stale lock. On a shared file system this relies on the file system's
  locking (NFS v4 and Lustre with ``flock`` mounted support it).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

try:  # POSIX; elsewhere locks are no-ops (lowres supports Linux and macOS)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lowres")
T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
WATCHDOG_PERIOD_S = 0.5
"""How often a worker checks that its parent is still alive (the fallback to PDEATHSIG)."""


def _die_with(parent_pid: int) -> None:
    """Worker initializer: end this process when ``parent_pid`` ends."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_PERIOD_S)
        os._exit(1)

    threading.Thread(target=watch, name="lowres-parent-watchdog", daemon=True).start()


def run_parallel(fn: Callable[..., T], calls: Sequence[tuple], workers: int) -> list[T]:
    """``[fn(*args) for args in calls]``, ``workers`` at a time in spawned processes.

    Spawn, not fork: torch's thread pools and CUDA state do not survive a fork. The workers end
    with this process (see the module docstring); if a call fails or this process is
    interrupted, the other workers are killed at once instead of finishing their (long) calls.

    Returns:
        The results in the order of ``calls``; the first failure is raised as is.
    """
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(calls))),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with,
        initargs=(os.getpid(),),
    )
    try:
        futures = [pool.submit(fn, *args) for args in calls]
        results = [f.result() for f in futures]
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.kill()
        for proc in processes:
            proc.join(timeout=5)
        raise
    pool.shutdown(wait=True)
    return results


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: the lock file; it is left in place afterwards (removing a lock file another
            process is about to open would let two processes hold "the" lock).
        what: what the lock guards, for the one log line a waiting process prints.
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another lowres process using %s", what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
