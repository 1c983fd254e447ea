"""A thread of each process's own that flushes a batch every so often.

What every request adds to (the metrics' counts, the access log's lines, a log handler's
gathered lines) is kept in memory and handed on in batches: a request's share of a batch costs
a fraction of doing the same work on its own, between two system calls, with cold caches. A
:class:`Flusher` is what hands each batch on: a daemon thread, started with the first item
(:meth:`Flusher.start` is cheap to call on every item), that calls ``flush`` every ``interval``
seconds. A forked child (a gunicorn worker) starts a thread of its own with its first item;
whatever its parent had not flushed is the parent's to flush, and ``after_fork`` drops the
child's copy of it.

Should the thread not start (a process at its limit of threads, say), nothing is lost and no caller
sees an error: the failure is logged once, ``running`` stays False, and the caller that found it
so flushes itself, as if unbatched; the next item tries to start the thread again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["Flusher"]

_LOG = logging.getLogger(__name__)


class Flusher:
    """Calls ``flush`` every ``interval`` seconds from a daemon thread named ``name``.

    ``flush`` must not raise (an error is its own to report); should it raise anyway, the thread
    goes on. ``after_fork`` runs in a forked child, before anything else there.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        flush: Callable[[], None],
        *,
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: the interval must be positive (seconds), not {interval!r}")
        self.name = name
        self.interval = interval
        self._flush = flush
        self._after_fork_of = after_fork
        self._lock = threading.Lock()
        #: Whether this process's thread runs: read on every item, so a plain attribute.
        self.running = False
        #: Whether a failed start has been logged (once per process, not once per item).
        self._failure_logged = False
        #: Set by stop(): the thread ends (and start() starts none).
        self._stopped = threading.Event()
        os.register_at_fork(after_in_child=_after_fork_of(weakref.ref(self)))

    def start(self) -> None:
        """Start this process's thread, unless it runs already (callers on a hot path check
        ``running`` first: a plain attribute read, where this takes a lock).

        Never raises: if the thread does not start, ``running`` stays False, the failure is
        logged (once) and ``flush`` is called here instead, so the caller's item still goes out.
        """
        with self._lock:
            if self.running or self._stopped.is_set():
                return
            try:
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
            except Exception as exc:  # RuntimeError: can't start new thread
                failure: Exception | None = exc
            else:
                self.running, failure = True, None
            log_it = failure is not None and not self._failure_logged
            if log_it:
                self._failure_logged = True
        if failure is None:
            return
        if log_it:
            _LOG.error(
                "%s: its thread did not start (%s): flushing in the callers until it does",
                self.name,
                failure,
            )
        with contextlib.suppress(Exception):  # see the class's doc: a later flush tries again
            self._flush()

    def stop(self) -> None:
        """End this process's thread (within an interval) and start no other: for an owner that
        is closed (a log handler that a reconfiguration, gunicorn's SIGHUP, replaces). What it
        had gathered is the owner's to flush."""
        self._stopped.set()
        self.running = False

    def _run(self) -> None:
        stopped = self._stopped
        while not stopped.wait(self.interval):
            try:
                self._flush()
            except Exception:  # see the class's doc: the next flush tries again
                continue

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self.running = False
        self._failure_logged = False
        stopped, self._stopped = self._stopped.is_set(), threading.Event()  # no lock held
        if stopped:
            self._stopped.set()
        if self._after_fork_of is not None:
            self._after_fork_of()


def _after_fork_of(flusher: weakref.ref[Flusher]) -> Callable[[], None]:
    def after_fork() -> None:
        alive = flusher()
        if alive is not None:
            alive._forked()

    return after_fork
