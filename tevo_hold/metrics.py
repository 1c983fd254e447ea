"""Prometheus metrics (prometheus_client), exposed at ``GET /metrics``.

Several processes (gunicorn's workers) each count their own requests; for ``/metrics`` to answer
the sum whichever worker serves it, prometheus_client's multiprocess mode must be on: the
environment variable ``PROMETHEUS_MULTIPROC_DIR`` names an empty directory, set *before* the
workers start (``server/gunicorn.conf.py`` does that, empties it at start-up and tells the
collector when a worker dies). Without it each process serves its own counts.

This module has no Flask in it: the core (:mod:`tevo_hold.service`, :mod:`tevo_hold.worker`)
counts its outcomes here too, whoever calls it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Generic, ParamSpec, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from . import errors
from .models import Outcome

__all__ = [
    "HOLDS",
    "INVOICES",
    "INVOICE_FAILURES",
    "LAPSED",
    "POS_CALLS",
    "POS_LATENCY",
    "RELEASES",
    "REQUESTS",
    "REQUEST_LATENCY",
    "Children",
    "counted",
    "exposition",
    "pos_call",
]

#: Seconds: TEvo wants answers well within 5 s, so the buckets are fine below that.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

REQUESTS = Counter(
    "tevo_hold_http_requests_total",
    "HTTP requests answered, by endpoint (the route's pattern), method and status.",
    ["endpoint", "method", "status"],
)
REQUEST_LATENCY = Histogram(
    "tevo_hold_http_request_duration_seconds",
    "Seconds from a request's arrival to its answer, by endpoint and method.",
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
    "Holds found lapsed (never invoiced in time), by who found it: release (TEvo released a "
    "lapsed hold), worker (released in the POS at its deadline).",
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

#: Label combinations a :class:`Children` remembers, at most: ours are few (endpoints, methods,
#: statuses, error codes), but a method is whatever a client sends, and memory must stay bounded.
MAX_CHILDREN = 10_000


class Children(Generic[M]):
    """The children of one labelled metric: ``children(*values)`` is ``metric.labels(*values)``.

    ``labels()`` checks its arguments, converts them and takes a lock on every call; the child
    it answers for the same values is always the same object, so here each is looked up once and
    then found in a dict (a few tenths of a microsecond instead of one or two, on every request).
    """

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self.metric.labels(*values)
            if len(self._children) < MAX_CHILDREN:
                self._children[values] = child
        return child


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the sum over every process's files.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def outcome_of(outcome: Outcome) -> str:
    """The label of a call that succeeded: ``replayed``, or the status it left the hold in."""
    return "replayed" if outcome.replayed else str(outcome.hold.status)


def counted(counter: Counter) -> Callable[[Callable[P, Outcome]], Callable[P, Outcome]]:
    """Count each call of the decorated method in ``counter`` by outcome (or error code)."""

    children = Children(counter)

    def decorate(method: Callable[P, Outcome]) -> Callable[P, Outcome]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Outcome:
            try:
                outcome = method(*args, **kwargs)
            except errors.TevoHoldError as exc:
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
    except Exception:
        result = errors.InternalError.code
        raise
    finally:
        _POS_LATENCY(call).observe(time.perf_counter() - started)
        _POS_CALLS(call, result).inc()
