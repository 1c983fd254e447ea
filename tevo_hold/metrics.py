"""Prometheus metrics (prometheus_client), exposed at ``GET /metrics``.

Several processes (gunicorn's workers) each count their own requests; for ``/metrics`` to answer
the sum whichever worker serves it, prometheus_client's multiprocess mode must be on: the
environment variable ``PROMETHEUS_MULTIPROC_DIR`` names an empty directory, set *before* the
workers start (``server/gunicorn.conf.py`` does that, empties it at start-up and tells the
collector when a worker dies). Without it each process serves its own counts.

This module has no Flask in it: the core (:mod:`tevo_hold.service`, :mod:`tevo_hold.worker`)
counts its outcomes here too, whoever calls it.

Counted in batches: what every request counts (:class:`Children`: its endpoint and status, its
latency, its outcome, its POS call) is added up in the process and written to prometheus_client's
values once per :data:`FLUSH_INTERVAL` by a thread of the process's own, rather than once per
request. In multiprocess mode each such write is a locked write to a memory-mapped file, and a
request made four of them: a sixth of what a hold costs the server beyond a bare Flask endpoint.
A process flushes its own counts whenever its metrics are read (``/metrics``, prometheus_client's
registry), and at exit; what ``/metrics`` shows of *another* worker is at most
:data:`FLUSH_INTERVAL` old, and a worker killed outright (SIGKILL) loses at most that much of its
counts.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import errors
from ._flusher import Flusher
from .ledger import Backlog
from .models import Outcome

__all__ = [
    "BACKLOG_MAX_AGE",
    "FLUSH_INTERVAL",
    "HOLDS",
    "INVOICES",
    "INVOICE_FAILURES",
    "LAPSED",
    "POS_CALLS",
    "POS_LATENCY",
    "RELEASES",
    "REQUESTS",
    "REQUEST_LATENCY",
    "BacklogCollector",
    "Children",
    "PendingRefusal",
    "counted",
    "exposition",
    "flush",
    "pos_call",
    "refusal_pending",
]

#: Seconds between two flushes of a process's batched counts (see the module's doc).
FLUSH_INTERVAL = 1.0
#: Seconds a process serves one reading of the worker's backlog (see BacklogCollector).
BACKLOG_MAX_AGE = 1.0


class _FlushOnRead:
    """A collector with no metrics of its own, registered in prometheus_client's registry before
    ours: whoever reads the registry (``/metrics``, the worker's metrics port,
    ``get_sample_value``) reads this process's counts flushed."""

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        flush()
        return ()


REGISTRY.register(_FlushOnRead())

#: Seconds: TEvo wants answers well within 5 s, so the buckets are fine below that.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

REQUESTS = Counter(
    "tevo_hold_http_requests_total",
    "HTTP requests answered, by endpoint (the route's pattern, or unmatched), method (HTTP's, "
    "or other) and status.",
    ["endpoint", "method", "status"],
)
REQUEST_LATENCY = Histogram(
    "tevo_hold_http_request_duration_seconds",
    "Seconds from a request's arrival to its answer, by endpoint and method (as in "
    "tevo_hold_http_requests_total).",
    ["endpoint", "method"],
    buckets=_BUCKETS,
)
HOLDS = Counter(
    "tevo_hold_holds_total",
    "Hold calls by outcome: held, replayed (a retry answered again), or the error code.",
    ["outcome"],
)
RELEASES = Counter(
    "tevo_hold_releases_total",
    "Release calls by outcome: released, expired (the hold had lapsed), replayed, or the error.",
    ["outcome"],
)
INVOICES = Counter(
    "tevo_hold_invoices_total",
    "Invoice calls by outcome: invoiced, replayed, or the error code.",
    ["outcome"],
)
POS_LATENCY = Histogram(
    "tevo_hold_pos_call_duration_seconds",
    "Seconds per POS adapter call (hold, release, invoice), retries included.",
    ["call"],
    buckets=_BUCKETS,
)
POS_CALLS = Counter(
    "tevo_hold_pos_calls_total",
    "POS adapter calls by call and result: ok, or the error code (pos_error, pos_timeout, "
    "unavailable, insufficient_quantity, listing_not_found, internal_error, ...).",
    ["call", "result"],
)
LAPSED = Counter(
    "tevo_hold_holds_lapsed_total",
    "Holds found lapsed (never invoiced in time), by who found it first: release (TEvo released "
    "a lapsed hold), worker (released in the POS at its deadline). Each lapsed hold counts once.",
    ["seen_by"],
)
INVOICE_FAILURES = Counter(
    "tevo_hold_invoice_failures_total",
    "Invoice attempts that failed in the POS (the hold is invoice_failed and will be retried), "
    "by who tried: api (TEvo's call) or worker (a retry).",
    ["by"],
)

P = ParamSpec("P")
M = TypeVar("M", Counter, Histogram)

#: Label combinations a :class:`Children` remembers, at most: a guard for this process's memory
#: only, since past it every new combination is still a new series of prometheus_client's. A
#: label's values must be bounded where they are chosen: the routes' patterns, the statuses, the
#: error codes, and the method a client sends as one of HTTP's or ``other``
#: (:data:`tevo_hold.observability.METRIC_METHODS`).
MAX_CHILDREN = 10_000


class Batch:
    """One child of a labelled metric, counted in this process and flushed in batches.

    ``inc()`` and ``observe()`` take a lock and add to a sum in memory (a few tenths of a
    microsecond); :func:`flush` adds those sums to the child's prometheus_client value.
    """

    __slots__ = ("_bounds", "_buckets", "_count", "_sum", "child")

    def __init__(self, child: Counter | Histogram) -> None:
        self.child = child
        self._count = 0.0
        self._sum = 0.0
        # a histogram's child: its upper bounds (+Inf last) and an observation count per bucket
        self._bounds: list[float] = list(getattr(child, "_upper_bounds", ()))
        self._buckets = [0] * len(self._bounds)

    def inc(self, amount: float = 1) -> None:
        """Count ``amount`` more (a counter's child)."""
        with _lock:
            self._count += amount
            _dirty.add(self)
        if not _flusher.running:
            _flusher.start()

    def observe(self, amount: float) -> None:
        """One observation of ``amount`` (a histogram's child)."""
        i = bisect.bisect_left(self._bounds, amount)  # the first bucket whose bound is >= amount
        with _lock:
            self._sum += amount
            self._buckets[i] += 1
            _dirty.add(self)
        if not _flusher.running:
            _flusher.start()

    def _take(self) -> tuple[float, float, list[int]]:
        """What was counted since the last flush, and start again from nothing (under _lock)."""
        taken = self._count, self._sum, self._buckets
        self._count, self._sum, self._buckets = 0.0, 0.0, [0] * len(self._bounds)
        return taken

    def _write(self, count: float, total: float, buckets: list[int]) -> None:
        """Add a flushed batch to prometheus_client's values of the child."""
        if not self._bounds:
            if count:
                self.child.inc(count)  # type: ignore[union-attr]
            return
        # A histogram's child has no public call that adds many observations at once: its
        # values are written as Histogram.observe writes them, a sum and a count per bucket
        # (test_observability holds the result equal to that of observe() per observation).
        child: Any = self.child
        child._sum.inc(total)
        for value, observed in zip(child._buckets, buckets, strict=True):
            if observed:
                value.inc(observed)


#: Every Batch with counts not yet flushed, and the lock of every Batch's counts.
_dirty: set[Batch] = set()
_lock = threading.Lock()
#: Held by a flush from taking the counts to writing them, so that a read of the metrics (which
#: flushes first) waits for a flush already under way and sees what it took.
_flush_lock = threading.Lock()


def flush() -> None:
    """Write this process's batched counts to prometheus_client now (see the module's doc)."""
    with _flush_lock:
        with _lock:
            taken = [(batch, batch._take()) for batch in _dirty]
            _dirty.clear()
        for batch, (count, total, buckets) in taken:
            batch._write(count, total, buckets)


def _forget_the_parents() -> None:
    """In a forked child: the parent's counts are the parent's to flush (the child's copy would
    count them twice), and a lock held in the parent is not held here."""
    global _lock, _flush_lock
    _lock, _flush_lock = threading.Lock(), threading.Lock()
    for batch in _dirty:
        batch._take()
    _dirty.clear()


_flusher = Flusher("tevo-hold-metrics", FLUSH_INTERVAL, flush, after_fork=_forget_the_parents)
atexit.register(flush)


class Children(Generic[M]):
    """The children of one labelled metric, each a :class:`Batch`: ``children(*values)`` counts
    what ``metric.labels(*values)`` counts, batched.

    ``labels()`` checks its arguments, converts them and takes a lock on every call; here the
    child of each combination of values is looked up once and then found in a dict.
    """

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], Batch] = {}

    def __call__(self, *values: str) -> Batch:
        child = self._children.get(values)
        if child is None:
            child = Batch(self.metric.labels(*values))
            if len(self._children) < MAX_CHILDREN:
                self._children[values] = child
        return child


class BacklogCollector(Collector):
    """The worker's backlog (:meth:`tevo_hold.ledger.Ledger.backlog`), read from Redis each time
    the metrics are read: ``tevo_hold_due_items`` and ``tevo_hold_due_oldest_seconds``.

    Gauges of the shared state, not of a process: every process that serves them reads the same
    figures, so they are read at scrape time rather than written to multiprocess files. A reading
    serves for ``max_age`` seconds (:data:`BACKLOG_MAX_AGE`): ``/metrics`` needs no key, and one
    reading is a round trip of two commands per shard, which a flood of scrapes must not
    multiply. When Redis does not answer the gauges are left out and the rest is served
    (``/readyz`` says why).
    """

    def __init__(self, read: Callable[[], Backlog], *, max_age: float | None = None) -> None:
        self._read = read
        self._max_age = BACKLOG_MAX_AGE if max_age is None else max_age
        #: The last reading (None: Redis did not answer) and when it was made.
        self._last: tuple[float, Backlog | None] | None = None
        #: The clock of the reading's age (tests move one of their own).
        self.clock: Callable[[], float] = time.monotonic

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()  # registering reads no Redis

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backlog = self._reading()
        return [] if backlog is None else self._families(backlog)

    def _reading(self) -> Backlog | None:
        now = self.clock()
        last = self._last
        if last is not None and now - last[0] < self._max_age:
            return last[1]
        try:
            backlog: Backlog | None = self._read()
        except errors.Unavailable:
            backlog = None
        self._last = (now, backlog)  # threads racing here each read once: harmless
        return backlog

    @staticmethod
    def _families(backlog: Backlog | None = None) -> list[GaugeMetricFamily]:
        items = GaugeMetricFamily(
            "tevo_hold_due_items",
            "Work due now that no worker has taken: POS releases of lapsed or released holds, "
            "compensations, invoice retries (tevo-hold worker does them).",
        )
        oldest = GaugeMetricFamily(
            "tevo_hold_due_oldest_seconds",
            "Seconds the oldest of those has waited past its time (0 for none): alert when it "
            "grows past a few minutes, no worker is doing the work.",
        )
        if backlog is not None:
            items.add_metric([], backlog.items)
            oldest.add_metric([], backlog.oldest_seconds)
        return [items, oldest]


def exposition(*extra: Collector) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type; ``extra`` collectors'
    metrics follow this process's registry's.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the sum over every process's files,
    this process's batched counts flushed first.
    """
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra:
        more = CollectorRegistry(auto_describe=False)
        for collector in extra:
            more.register(collector)
        text += generate_latest(more)
    return text, CONTENT_TYPE_LATEST


def outcome_of(outcome: Outcome) -> str:
    """The label of a call that succeeded: ``replayed``, or the status it left the hold in."""
    return "replayed" if outcome.replayed else str(outcome.hold.status)


class PendingRefusal:
    """What :func:`refusal_pending` yields: the counts of the calls refused by the rate limit
    within its block, made when the block ends unless :meth:`drop` forgets them."""

    __slots__ = ("batches",)

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def drop(self) -> None:
        """Forget the refusals seen so far, and count every call from now on as it ends: the
        caller calls again, and that call's outcome is the one to count."""
        self.batches.clear()
        _pending.set(None)


#: Within :func:`refusal_pending`: where :func:`counted` leaves the count of a refused call.
_pending: ContextVar[PendingRefusal | None] = ContextVar("tevo_hold_pending", default=None)


@contextlib.contextmanager
def refusal_pending() -> Iterator[PendingRefusal]:
    """Within this block, a call of a :func:`counted` method refused by the rate limit
    (RateLimited) is counted when the block ends, unless the :class:`PendingRefusal` yielded is
    dropped first: for a caller that may make the call again after the refusal (a hold's first
    invoice is sold past the budget), so that one request counts one outcome."""
    pending = PendingRefusal()
    token = _pending.set(pending)
    try:
        yield pending
    finally:
        _pending.reset(token)
        for batch in pending.batches:
            batch.inc()


def counted(counter: Counter) -> Callable[[Callable[P, Outcome]], Callable[P, Outcome]]:
    """Count each call of the decorated method in ``counter`` by outcome (or error code);
    within :func:`refusal_pending`, a refusal by the rate limit when that block ends."""

    children = Children(counter)

    def decorate(method: Callable[P, Outcome]) -> Callable[P, Outcome]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Outcome:
            try:
                outcome = method(*args, **kwargs)
            except errors.TevoHoldError as exc:
                pending = _pending.get()
                if pending is not None and isinstance(exc, errors.RateLimited):
                    pending.batches.append(children(exc.code))
                else:
                    children(exc.code).inc()
                raise
            except Exception:
                children(errors.InternalError.code).inc()
                raise
            children(outcome_of(outcome)).inc()
            return outcome

        return wrapper

    return decorate


_POS_LATENCY = Children(POS_LATENCY)
_POS_CALLS = Children(POS_CALLS)


@contextlib.contextmanager
def pos_call(call: str) -> Iterator[None]:
    """Time one POS adapter call and count its result."""
    started = time.perf_counter()
    result = "ok"
    try:
        yield
    except errors.TevoHoldError as exc:
        result = exc.code
        raise
    except BaseException:  # an interrupt, which adapter_call lets through
        result = errors.InternalError.code
        raise
    finally:
        _POS_LATENCY(call).observe(time.perf_counter() - started)
        _POS_CALLS(call, result).inc()
