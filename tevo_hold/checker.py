"""Conformance checker: plays TEvo's side of the HTTP contract against any deployment.

:func:`run_checks` (or :class:`Checker`) calls a running server the way TEvo does and judges each
answer against the README's contract: the full flows (hold → invoice, hold → release, retries of
each, an invoice retried with the order id as a string), the documented conflicts (a global_id
reused for another quantity or listing) and not-founds, bad input (unknown path, wrong method,
a body that is not JSON or does not parse, fields out of bounds: each a JSON problem document),
API-key checks (no key and a wrong one, as X-API-Key and as a Bearer token, on every call),
concurrent holds on a small listing, and, when the server's hold TTL is short enough, a hold
lapsing. Every time must be RFC 3339 UTC (``2026-11-23T12:00:00.123Z``; ``+00:00`` for ``Z`` is
RFC 3339 UTC too). It returns a :class:`Report`: one :class:`CheckResult` per check, each PASS,
FAIL (with a one-line reason) or SKIP (not run, with the reason), and the latency of every call
it made.

It needs nothing from the server but HTTP: it works against this project's server or any other
implementation of the same contract. It does need listings to hold tickets of:

- the *flow listing* (at least :data:`FLOW_TICKETS` tickets available): the flows and the key
  checks hold one or two tickets of it at a time; each run sells one ticket of it for good (the
  hold → invoice flow), the others are released (or lapse, without a small listing). Its tickets
  are counted (a hold of more than it has must be refused with ``available``, its count) before
  that sale and after it and its retries, and before the hold that is released and after its
  release and the release's retries: each time they must be as many, a sale taking held tickets
  once and a release giving them back once. ``available`` is optional (the README gives it only
  when the POS tells): without it these counts are not made (SKIP);
- the *small listing* (its whole stock available, fewer tickets than ``concurrency``): since the
  checker knows its stock, it counts tickets there, by what holds win (and by ``available``, when
  an answer has it). A hold of one more than its stock must be refused (409);
  ``concurrency`` one-ticket holds fired at once must win exactly its stock; once the winners are
  released, all of it must be holdable in one hold, and then not one ticket more; identical
  one-ticket holds sent at once, then retried, must take one ticket; and a hold of all of it
  must keep it half-way to its deadline (still held, not one ticket more holdable) and lapse
  then: its tickets come back, and while another hold has them all again its invoice is 410
  hold_expired and its release gives back nothing more; then all of it is holdable once more,
  and not one ticket more. After one of these failed, the others are not run (the stock is
  unknown). Every ticket held is given back, so the run leaves it as it found it.

A 429 (the key's rate limit) fails the check it came in with a line that says so, and the
checks after it are not run. Cleanup releases answered 429 (or 409 request_in_progress) are
retried after Retry-After for up to the timeout; one that still fails is reported in its check
(FAIL: what that hold took stays taken until it lapses).

:func:`prepare_listings` stocks two fresh listings of the reference inventory in the server's
Redis, for deployments of this project. Every run uses fresh ``global_id`` values (a uuid per run),
so runs never collide, with each other or with real traffic.

The checker is a client only: one ``requests.Session`` (its pool sized for the concurrency
check), a timeout on every call, and no retries but those of its cleanup releases.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import statistics
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_EXPIRY_WAIT",
    "DEFAULT_TIMEOUT",
    "FLOW_TICKETS",
    "MAX_CONCURRENCY",
    "Call",
    "CheckResult",
    "Checker",
    "Listing",
    "Report",
    "Result",
    "base_url_of",
    "prepare_listings",
    "run_checks",
]

#: Tickets of the flow listing a run may hold at one time (its flows hold one or two at a time).
FLOW_TICKETS = 4
#: Fields of a hold out of the contract's bounds (one each): every one must be a 400.
BAD_FIELDS: tuple[tuple[str, Any], ...] = (
    ("quantity", "two"),
    ("quantity", 0),
    ("quantity", -1),
    ("quantity", 1.5),
    ("quantity", True),
    ("quantity", 10_001),
    ("remote_id", ""),
)
#: Seconds the checker waits for any one answer.
DEFAULT_TIMEOUT = 10.0
#: The expiry check runs only when holds live at most this many seconds.
DEFAULT_MAX_EXPIRY_WAIT = 5.0
#: One-ticket holds fired at once at the small listing, by default and at most (one thread each).
DEFAULT_CONCURRENCY = 20
MAX_CONCURRENCY = 500
#: Identical holds the checker sends at once (as TEvo's retries may arrive).
_COPIES = 4
#: The hold that counts the flow listing's tickets: the contract's largest quantity, refused
#: with the count of what is available.
_COUNT_PROBE = 10_000
#: Seconds of slack for deciding whether a hold had lapsed at the time of a call (TTLs are in ms,
#: and the server's clock starts a hold somewhere between our send and our receive).
_SLACK = 0.1
#: Seconds waited past a hold's deadline before the expiry check reads it.
_EXPIRY_MARGIN = 0.25

#: What no HTTP header's value may hold.
_LINE_BREAK = re.compile(r"[\r\n]")

PROBLEM_TYPE = "application/problem+json"
#: The fields of a hold in every successful answer (README, "The HTTP API").
HOLD_FIELDS = (
    "global_id",
    "remote_id",
    "quantity",
    "status",
    "created_at",
    "expires_at",
    "tevo_order_id",
    "invoiced_at",
    "released_at",
)


class Result(enum.StrEnum):
    """The outcome of one check. SKIP (not run) is neither a pass nor a failure."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Listing:
    """A listing the checker may hold tickets of: its ``remote_id`` and available ``quantity``."""

    remote_id: str
    quantity: int

    @classmethod
    def parse(cls, text: str) -> Listing:
        """``REMOTE_ID:QUANTITY`` (split at the last colon, so ids may hold colons).

        Raises ValueError with a message fit for the user.
        """
        remote_id, sep, count = text.rpartition(":")
        if not sep or not remote_id:
            raise ValueError(f"{text!r} is not REMOTE_ID:QUANTITY")
        try:
            quantity = int(count)
        except ValueError:
            raise ValueError(f"{text!r}: QUANTITY {count!r} is not an integer") from None
        if quantity < 1:
            raise ValueError(f"{text!r}: QUANTITY must be at least 1")
        return cls(remote_id, quantity)

    def __str__(self) -> str:
        return f"{self.remote_id!r} ({self.quantity} tickets)"


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call a check made: what, the status answered (None: no answer), how long."""

    method: str
    path: str
    status: int | None
    latency_ms: float


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the report. ``reason`` is one line: why it failed or was not run, or on PASS
    what it could not judge (mostly empty)."""

    name: str
    result: Result
    reason: str
    calls: tuple[Call, ...]

    @property
    def passed(self) -> bool:
        return self.result is Result.PASS

    @property
    def latency_p50_ms(self) -> float | None:
        """The median latency of the check's calls (None if it made none)."""
        return statistics.median(c.latency_ms for c in self.calls) if self.calls else None

    @property
    def latency_max_ms(self) -> float | None:
        """The slowest of the check's calls (None if it made none)."""
        return max(c.latency_ms for c in self.calls) if self.calls else None


@dataclass(frozen=True, slots=True)
class Report:
    """Every check of one run against ``base_url``. ``ok`` is True when no check failed."""

    base_url: str
    checks: tuple[CheckResult, ...]
    flow_listing: Listing
    small_listing: Listing | None
    concurrency: int

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.result is Result.FAIL]

    @property
    def skipped(self) -> list[CheckResult]:
        return [c for c in self.checks if c.result is Result.SKIP]

    def __getitem__(self, name: str) -> CheckResult:
        """The check called ``name``; KeyError if there is none."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def format(self, style: Callable[[Result, str], str] | None = None) -> str:
        """The report as text: a heading, one row per check, and the :meth:`summary` line.

        ``style(result, text)`` may decorate the result column (the CLI colours it); it must not
        change the text's width as printed.
        """
        heading = [
            f"tevo-hold check of {self.base_url}",
            f"  flows on listing {self.flow_listing}; stock and concurrency on "
            + (
                f"listing {self.small_listing}, {self.concurrency} holds at once"
                if self.small_listing
                else "no listing (not run)"
            ),
            "",
        ]
        rows = [("CHECK", "RESULT", "MS P50/MAX", "REASON")]
        for check in self.checks:
            p50, top = check.latency_p50_ms, check.latency_max_ms
            latency = "" if p50 is None or top is None else f"{_ms(p50)}/{_ms(top)}"
            rows.append((check.name, check.result.value, latency, check.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = []
        for i, (name, result, latency, reason) in enumerate(rows):
            cell = result.ljust(widths[1])
            if style is not None and i > 0:
                cell = style(Result(result), cell)
            line = f"{name.ljust(widths[0])}  {cell}  {latency.rjust(widths[2])}  {reason}"
            lines.append(line.rstrip())
        return "\n".join([*heading, *lines, "", self.summary()])

    def summary(self) -> str:
        """One line: PASS or FAIL, and the counts (with the failed checks' names)."""
        total, failed, skipped = len(self.checks), self.failed, self.skipped
        passed = total - len(failed) - len(skipped)
        not_run = f", {len(skipped)} not run" if skipped else ""
        if failed:
            names = ", ".join(c.name for c in failed[:3])
            if len(failed) > 3:
                names += f" and {len(failed) - 3} more"
            return (
                f"FAIL: {len(failed)} of {total} checks failed ({names}); {passed} passed{not_run}"
            )
        return f"PASS: {passed} of {total} checks passed{not_run}"


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


# -- answers and expectations ------------------------------------------------------------------


class CheckFailed(Exception):
    """Raised inside a check: the check fails with this one-line reason."""


class _RateLimited(CheckFailed):
    """Raised by a call answered 429: the key's rate limit, which stops the run. ``answer`` is
    that answer (the call made nothing)."""

    def __init__(self, line: str, answer: _Answer) -> None:
        super().__init__(line)
        self.answer = answer


class _NotRun(Exception):
    """Raised inside a check: the check is reported SKIP with this one-line reason."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """A server's answer, as a check sees it. ``body`` is the parsed JSON (None if not JSON)."""

    method: str
    path: str
    note: str  # " without a key", ... : how the call differed from a plain one, for messages
    status: int
    content_type: str
    headers: Mapping[str, str]
    body: Any
    not_json: str | None  # why the body is not JSON, or None when it is
    sent: float  # time.monotonic() when sent / received
    received: float

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}{self.note}"

    @property
    def code(self) -> str | None:
        code = self.body.get("code") if isinstance(self.body, dict) else None
        return code if isinstance(code, str) else None

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed", "").strip().lower() == "true"

    def describe(self) -> str:
        """``409 insufficient_quantity``, ``200 (status released)``, ``500``: the gist."""
        if self.code:
            return f"{self.status} {self.code}"
        if isinstance(self.body, dict) and isinstance(self.body.get("status"), str):
            return f"{self.status} (status {self.body['status']})"
        return str(self.status)


def _json_body(answer: _Answer) -> Any:
    """The answer's JSON body; fails the check when the answer is not JSON."""
    if answer.not_json is not None:
        raise CheckFailed(f"{answer.label} answered {answer.status} {answer.not_json}")
    return answer.body


def _expect_problem(answer: _Answer, status: int, code: str) -> dict[str, Any]:
    """A ``status`` problem document with ``code``, as ``application/problem+json``."""
    body = _json_body(answer)
    if answer.status != status or answer.code != code:
        raise CheckFailed(f"{answer.label} answered {answer.describe()}, expected {status} {code}")
    if answer.content_type != PROBLEM_TYPE:
        raise CheckFailed(
            f"{answer.label} answered {status} {code} as {answer.content_type or 'no type'}, "
            f"not {PROBLEM_TYPE}"
        )
    assert isinstance(body, dict)  # it has a code
    return body


def _expect_status(answer: _Answer, status: int) -> Any:
    body = _json_body(answer)
    if answer.status != status:
        raise CheckFailed(f"{answer.label} answered {answer.describe()}, expected {status}")
    return body


#: An RFC 3339 date-time in UTC (section 5.6, with "Z" or the offset "+00:00": "-00:00" says
#: the offset is unknown, section 4.3), as the README promises every time of a hold to be.
_RFC3339_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|\+00:00)",
    re.ASCII,
)


def _utc_time(value: str) -> datetime | None:
    """``value`` as an aware datetime if it is an RFC 3339 UTC time, else None.

    ``datetime.fromisoformat`` is no judge: it reads ISO 8601's basic format
    (``20261123T120000Z``), week dates and any offset, none of which the contract allows.
    """
    match = _RFC3339_UTC.fullmatch(value)
    if match is None:
        return None
    *fields, fraction = match.groups()
    year, month, day, hour, minute, second = map(int, fields)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    second = 59 if second == 60 else second  # RFC 3339 allows a leap second; datetime cannot
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError:  # month 13, February 30, hour 24, ...
        return None


def _time(answer: _Answer, body: Mapping[str, Any], name: str, *, null: bool) -> datetime | None:
    value = body.get(name)
    if value is None:
        if null:
            return None
        raise CheckFailed(f"{answer.label} answered a hold whose {name} is null")
    if not isinstance(value, str):
        raise CheckFailed(f"{answer.label} answered {name}={value!r}, not an RFC 3339 string")
    parsed = _utc_time(value)
    if parsed is None:
        raise CheckFailed(
            f"{answer.label} answered {name}={value!r}, not an RFC 3339 UTC time "
            "(such as 2026-11-23T12:00:00.123Z)"
        )
    return parsed


def _expect_hold(
    answer: _Answer,
    status: int,
    *,
    global_id: str,
    remote_id: str,
    quantity: int,
    states: Sequence[str],
) -> dict[str, Any]:
    """A hold of the given identity, answered with ``status``, whose status is one of ``states``."""
    body = _expect_status(answer, status)
    if not isinstance(body, dict):
        raise CheckFailed(f"{answer.label} answered a JSON {type(body).__name__}, not a hold")
    missing = [f for f in HOLD_FIELDS if f not in body]
    if missing:
        raise CheckFailed(f"{answer.label} answered a hold without {', '.join(missing)}")
    got = (body["global_id"], body["remote_id"], body["quantity"])
    if got != (global_id, remote_id, quantity) or isinstance(body["quantity"], bool):
        raise CheckFailed(
            f"{answer.label} answered the hold (global_id, remote_id, quantity) = {got!r}, "
            f"expected {(global_id, remote_id, quantity)!r}"
        )
    if body["status"] not in states:
        raise CheckFailed(
            f"{answer.label} answered status {body['status']!r}, expected {' or '.join(states)}"
        )
    created = _time(answer, body, "created_at", null=False)
    expires = _time(answer, body, "expires_at", null=False)
    assert created is not None and expires is not None
    if expires <= created:
        raise CheckFailed(f"{answer.label} answered expires_at not after created_at")
    for name in ("invoiced_at", "released_at"):
        _time(answer, body, name, null=True)
    return body


def _expect_fresh(answer: _Answer) -> None:
    if answer.replayed:
        raise CheckFailed(f"{answer.label} answered Idempotent-Replayed: true to a first call")


def _expect_replay(answer: _Answer, first: _Answer) -> None:
    """The same status and body as ``first``, with ``Idempotent-Replayed: true``."""
    body = _json_body(answer)
    if answer.status != first.status:
        raise CheckFailed(
            f"{answer.label} retry answered {answer.describe()}, the first call {first.describe()}"
        )
    if body != first.body:
        if isinstance(body, dict) and isinstance(first.body, dict):
            keys = sorted(set(body) | set(first.body))
            diff = ", ".join(k for k in keys if body.get(k) != first.body.get(k))
            raise CheckFailed(f"{answer.label} retry answered a body that differs in: {diff}")
        raise CheckFailed(f"{answer.label} retry answered another body than the first call")
    if not answer.replayed:
        got = answer.headers.get("Idempotent-Replayed")
        raise CheckFailed(
            f"{answer.label} retry answered without Idempotent-Replayed: true"
            + (f" (got {got!r})" if got is not None else "")
        )


# -- the checker -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    """A check being run: its calls so far (appended from any thread)."""

    name: str
    calls: list[Call] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    #: Whether the server answered 401 invalid_signature to one of the calls.
    signature_refused: bool = False
    #: Whether the server answered 401 unauthorized to a call that sent the checker's key.
    key_refused: bool = False
    #: What a passing check could not judge (its reason on PASS).
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Why cleanup releases failed: what those holds took stays taken until they lapse.
    stranded: list[str] = dataclasses.field(default_factory=list)

    def done(self, result: Result, reason: str = "") -> CheckResult:
        with self.lock:
            return CheckResult(self.name, result, reason, tuple(self.calls))


@dataclass(frozen=True, slots=True)
class _Held:
    """A hold a flow made: its identity and the answer that made it (with its times)."""

    global_id: str
    remote_id: str
    quantity: int
    answer: _Answer


_Step = Callable[[_Row], None]


class Checker:
    """One conformance run against ``base_url``; see the module docstring for the listings.

    ``api_key`` is sent as ``X-API-Key`` (the Bearer form is checked too). ``flow_listing`` needs
    at least :data:`FLOW_TICKETS` tickets available; ``small_listing`` (optional: without it the
    checks that count tickets are not run) needs its whole stock available and fewer tickets than
    ``concurrency``. The expiry check waits for a hold to lapse only when the server's holds live
    at most ``max_expiry_wait`` seconds. ``timeout`` bounds every call. Raises ValueError for
    listings that cannot work, or an API key that cannot be sent as a header (the message never
    quotes it; no report ever shows it). Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        flow_listing: Listing,
        small_listing: Listing | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_expiry_wait: float = DEFAULT_MAX_EXPIRY_WAIT,
        timeout: float = DEFAULT_TIMEOUT,
        sign: bool = False,
    ) -> None:
        if flow_listing.quantity < FLOW_TICKETS:
            raise ValueError(
                f"the flow listing needs at least {FLOW_TICKETS} tickets, "
                f"{flow_listing.remote_id!r} has {flow_listing.quantity}"
            )
        if not 2 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be from 2 to {MAX_CONCURRENCY}")
        if small_listing is not None and small_listing.quantity >= concurrency:
            raise ValueError(
                f"the small listing {small_listing.remote_id!r} has {small_listing.quantity} "
                f"tickets: it needs fewer than the {concurrency} concurrent holds, or nothing "
                "competes (use a smaller listing or a higher concurrency)"
            )
        if small_listing is not None and small_listing.remote_id == flow_listing.remote_id:
            raise ValueError("the flow listing and the small listing must be different listings")
        unsendable = _header_problem(api_key)
        if unsendable:
            raise ValueError(f"the API key cannot be sent as an HTTP header: {unsendable}")
        self.base_url = base_url_of(base_url)
        self.api_key = api_key
        self.flow = flow_listing
        self.small = small_listing
        self.concurrency = concurrency
        self.max_expiry_wait = max_expiry_wait
        self.timeout = timeout
        self.sign = sign
        self.run_id = uuid.uuid4().hex[:12]
        self.wrong_key = _wrong_key(api_key)
        self.session = requests.Session()
        # An auth of its own that adds nothing: without one, requests sends the credentials of a
        # ~/.netrc entry for the host as Basic auth, in place of the Bearer key of the checks
        # that send one (a correct server failed them). Proxies from the environment still work.
        self.session.auth = _no_auth
        pool = HTTPAdapter(pool_connections=1, pool_maxsize=max(10, concurrency), max_retries=0)
        self.session.mount("http://", pool)
        self.session.mount("https://", pool)
        self._ids = 0
        self._ttl: float | None = None  # seconds holds live, learnt from the first hold
        self._flow: dict[str, Any] = {}  # what a flow's first checks made, for the next ones
        self._rate_limited: str | None = None  # the line of the first 429 answered, if any
        self._rate_limited_lock = threading.Lock()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _gid(self, what: str) -> str:
        """A global_id no other run, and no other call of this run, uses."""
        self._ids += 1
        return f"tevo-hold-check-{self.run_id}-{self._ids}-{what}"

    def _call(
        self,
        row: _Row,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        key: str | None = "",
        headers: Mapping[str, str] | None = None,
        note: str = "",
        limited_ok: bool = False,
    ) -> _Answer:
        """One call, recorded in ``row``. ``key`` "" sends our key, None no key, else that key.

        Transport failures (no connection, no answer in time) fail the check, and so does a 429
        (the key's rate limit, which stops the run: see :meth:`run`) unless ``limited_ok``.
        """
        sent_headers: dict[str, str] = {"Accept": "application/json"}
        if key is not None:
            sent_headers["X-API-Key"] = key or self.api_key
        if body is not None or raw is not None:
            sent_headers["Content-Type"] = "application/json"
        sent_headers.update(headers or {})
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        label = f"{method} {path}{note}"
        sent = time.monotonic()
        try:
            request = requests.Request(method, self.base_url + path, sent_headers, data=data)
            prepared = self.session.prepare_request(request)
            signing_key = _sent_key(sent_headers)
            if self.sign and signing_key is not None:
                prepared.headers["X-Signature"] = _signature(signing_key, prepared)
            environment = self.session.merge_environment_settings(
                prepared.url, {}, None, None, None
            )
            response = self.session.send(
                prepared, timeout=self.timeout, allow_redirects=False, **environment
            )
        except requests.Timeout:
            self._record(row, method, path, None, sent)
            raise CheckFailed(f"{label}: no answer within {self.timeout:g} s") from None
        except requests.RequestException as exc:
            self._record(row, method, path, None, sent)
            raise CheckFailed(f"{label}: no answer: {self._redact(_root_cause(exc))}") from None
        with response:
            content = response.content
        received = time.monotonic()
        self._record(row, method, path, response.status_code, sent, received)
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        parsed, not_json = _parse(content_type, content)
        if response.status_code == 401 and isinstance(parsed, dict):
            row.signature_refused |= parsed.get("code") == "invalid_signature"
            row.key_refused |= parsed.get("code") == "unauthorized" and _sent_key(sent_headers) == (
                self.api_key
            )
        answer = _Answer(
            method,
            path,
            note,
            response.status_code,
            content_type,
            response.headers,
            parsed,
            not_json,
            sent,
            received,
        )
        if answer.status == 429 and not limited_ok:
            line = (
                f"{answer.label} answered {answer.describe()}{_retry_after_text(answer)}: the "
                "API key's rate limit was hit, so the run stopped (run it again once the limit "
                "allows, or give the key a higher limit)"
            )
            with self._rate_limited_lock:
                self._rate_limited = self._rate_limited or line
            raise _RateLimited(line, answer)
        return answer

    @staticmethod
    def _record(
        row: _Row,
        method: str,
        path: str,
        status: int | None,
        sent: float,
        received: float | None = None,
    ) -> None:
        elapsed = (received if received is not None else time.monotonic()) - sent
        with row.lock:
            row.calls.append(Call(method, path, status, elapsed * 1000))

    def _hold(
        self, row: _Row, remote_id: str, quantity: int, global_id: str, **kwargs: Any
    ) -> _Answer:
        body = {"remote_id": remote_id, "quantity": quantity, "global_id": global_id}
        return self._call(row, "POST", "/v1/holds", body=body, **kwargs)

    def _release(self, row: _Row, global_id: str, **kwargs: Any) -> _Answer:
        return self._call(row, "POST", "/v1/releases", body={"global_id": global_id}, **kwargs)

    def _invoice(self, row: _Row, global_id: str, order: int | str, **kwargs: Any) -> _Answer:
        body = {"global_id": global_id, "tevo_order_id": order}
        return self._call(row, "POST", "/v1/invoices", body=body, **kwargs)

    def _get(self, row: _Row, global_id: str, **kwargs: Any) -> _Answer:
        return self._call(row, "GET", "/v1/holds/" + quote(global_id, safe=""), **kwargs)

    def _new_hold(self, row: _Row, what: str, quantity: int = 1) -> _Held:
        """Hold ``quantity`` tickets of the flow listing under a fresh global_id; fail unless
        held."""
        gid = self._gid(what)
        answer = self._hold(row, self.flow.remote_id, quantity, gid)
        return self._made(answer, gid, self.flow.remote_id, quantity)

    def _made(self, answer: _Answer, gid: str, remote_id: str, quantity: int) -> _Held:
        """The hold a first hold call made; fails the check unless it answered one, held."""
        _expect_hold(
            answer, 201, global_id=gid, remote_id=remote_id, quantity=quantity, states=["held"]
        )
        _expect_fresh(answer)
        for name in ("tevo_order_id", "invoiced_at", "released_at"):
            if answer.body[name] is not None:
                raise CheckFailed(f"{answer.label} answered a new hold whose {name} is not null")
        if self._ttl is None:
            self._ttl = _lifetime(answer.body)
        return _Held(gid, remote_id, quantity, answer)

    def _may_have_lapsed(self, held: _Held, answer: _Answer) -> bool:
        """Whether ``held`` may have lapsed before the server made ``answer``."""
        return answer.received >= held.answer.sent + _lifetime(held.answer.body) - _SLACK

    def _states(self, held: _Held, answer: _Answer, live: str, lapsed: str) -> list[str]:
        """The statuses the contract allows for ``held`` at the time of ``answer``.

        ``live`` while the hold surely had not lapsed, ``lapsed`` once it surely had, either
        in between (the server started the hold somewhere between our send and our receive).
        """
        if self._ttl is None or answer.received < held.answer.sent + self._ttl - _SLACK:
            return [live]
        if answer.sent > held.answer.received + self._ttl + _SLACK:
            return [lapsed]
        return [live, lapsed]

    def _expect_same_hold(
        self, answer: _Answer, held: _Held, status: int, states: Sequence[str]
    ) -> dict[str, Any]:
        return _expect_hold(
            answer,
            status,
            global_id=held.global_id,
            remote_id=held.remote_id,
            quantity=held.quantity,
            states=states,
        )

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> Report:
        """Run every check, in a fixed order, and report. Never raises for a server's faults."""
        results: list[CheckResult] = []

        # name, step, the checks that must have passed for it to run
        plan: list[tuple[str, _Step, tuple[str, ...]]] = [
            ("healthz -> 200 without a key", self._healthz, ()),
            ("auth: no key -> 401", self._no_key, ()),
            ("auth: wrong key -> 401", self._wrong_key, ()),
            ("auth: X-API-Key accepted", self._key_accepted, ()),
            ("auth: Bearer key accepted", self._bearer_accepted, ()),
            ("errors: unknown path -> 404 JSON", self._unknown_path, ()),
            ("errors: wrong method -> 405 JSON", self._wrong_method, ()),
            ("errors: body not JSON -> 415 JSON", self._not_json, ()),
            ("errors: bad JSON -> 400 malformed_json", self._malformed_json, ()),
            ("errors: bad field -> 400 invalid_request", self._bad_field, ()),
            ("hold -> 201 held", self._flow_hold, ()),
            ("hold retry -> replay", self._flow_hold_retry, ("hold -> 201 held",)),
            ("GET hold -> 200", self._flow_get, ("hold -> 201 held",)),
            ("invoice -> 201 invoiced", self._flow_invoice, ("hold -> 201 held",)),
            ("invoice retry -> replay", self._flow_invoice_retry, ("invoice -> 201 invoiced",)),
            (
                "invoice, other order id -> 409 order_id_conflict",
                self._flow_order_conflict,
                ("invoice -> 201 invoiced",),
            ),
            (
                "release after invoice -> 409 hold_already_invoiced",
                self._flow_release_invoiced,
                ("invoice -> 201 invoiced",),
            ),
            (
                "stock: an invoice and its retries sell once",
                self._flow_sold_once,
                ("invoice -> 201 invoiced",),
            ),
            ("hold, release -> 200 released", self._flow_release, ()),
            ("release retry -> 200", self._flow_release_retry, ("hold, release -> 200 released",)),
            (
                "invoice after release -> 409 hold_released",
                self._flow_invoice_released,
                ("hold, release -> 200 released",),
            ),
            (
                "stock: a release and its retries give back once",
                self._flow_released_once,
                ("release retry -> 200",),
            ),
            ("global_id reused -> 409 global_id_conflict", self._global_id_conflict, ()),
            ("unknown listing -> 404 listing_not_found", self._unknown_listing, ()),
            ("unknown hold -> 404 hold_not_found", self._unknown_hold, ()),
        ]
        for name, step, needs in plan:
            row = _Row(name)
            if self._rate_limited is not None:
                results.append(row.done(Result.SKIP, _AFTER_RATE_LIMIT))
                continue
            failed_needs = [n for n in needs if not any(r.name == n and r.passed for r in results)]
            if failed_needs:
                results.append(row.done(Result.SKIP, f"not run: needs {failed_needs[0]!r}"))
                continue
            results.append(self._run_step(row, step))
        self._give_back_flow_holds(results)
        # The checks that count the small listing's tickets, in turn: after one failed, the
        # stock is unknown (and the next would only report that again).
        counting: list[tuple[str, _Step]] = [
            ("stock: more than available -> 409 insufficient_quantity", self._more_than_available),
            ("concurrent holds: no oversell", self._concurrent_holds),
            ("stock: released tickets can be held again", self._released_come_back),
            ("stock: a retried hold takes its tickets once", self._retries_take_once),
            ("expiry: lapsed hold -> expired", self._expiry),
        ]
        failed: str | None = None
        for name, step in counting:
            row = _Row(name)
            if self._rate_limited is not None:
                results.append(row.done(Result.SKIP, _AFTER_RATE_LIMIT))
                continue
            if failed is not None:
                reason = f"not run: {failed!r} failed, so the small listing's stock is unknown"
                results.append(row.done(Result.SKIP, reason))
                continue
            results.append(self._run_step(row, step))
            if results[-1].result is Result.FAIL and self.small is not None:
                failed = name
        return Report(
            self.base_url,
            tuple(results),
            self.flow,
            self.small,
            self.concurrency,
        )

    def _give_back_flow_holds(self, results: list[CheckResult]) -> None:
        """Give back the flow holds that a stopped run left held (a 429, or a call with no
        answer, before the invoice or the release that was to end them), so that the flow
        listing is not left short until they lapse. A release that does not get done is
        reported on the last check that failed (the one that stopped the run)."""
        row = _Row("cleanup")
        for made, ended in (("sold", "invoice"), ("released", "release")):
            held: _Held | None = self._flow.get(made)
            if held is not None and ended not in self._flow:
                self._quiet_release(row, held.global_id)
        failed = [i for i, r in enumerate(results) if r.result is Result.FAIL]
        if row.stranded and failed:
            many = len(row.stranded)
            line = (
                f"{many} release{'s' if many > 1 else ''} of the flow's holds failed, so what "
                f"{'they' if many > 1 else 'it'} took stays taken until it lapses: "
                f"{row.stranded[0]}"
            )
            last = results[failed[-1]]
            results[failed[-1]] = dataclasses.replace(
                last, reason=self._redact(f"{last.reason}; {line}")
            )

    def _run_step(self, row: _Row, step: _Step) -> CheckResult:
        limited = self._rate_limited
        result, reason = self._judge_step(row, step)
        if self._rate_limited is not None and limited is None:
            # Whatever the check made of it, a 429 is the key's limit, not the check's fault.
            result, reason = Result.FAIL, self._rate_limited
        if row.stranded:
            many = len(row.stranded)
            line = (
                f"{many} cleanup release{'s' if many > 1 else ''} failed, so what "
                f"{'those holds' if many > 1 else 'that hold'} took stays taken until it "
                f"lapses: {row.stranded[0]}"
            )
            reason = f"{reason}; {line}" if result is Result.FAIL else line
            result = Result.FAIL
        return row.done(result, self._redact(reason))

    def _judge_step(self, row: _Row, step: _Step) -> tuple[Result, str]:
        try:
            step(row)
        except CheckFailed as exc:
            reason = str(exc)
            if row.signature_refused and not self.sign:
                reason += " (the server requires signed requests: sign them, --sign)"
            elif row.key_refused:
                reason += (
                    " (the server refused the API key given: check --api-key or "
                    "TEVO_HOLD_CHECK_API_KEY)"
                )
            return Result.FAIL, reason
        except _NotRun as exc:
            return Result.SKIP, str(exc)
        except Exception as exc:  # a checker bug or a body of an unexpected shape
            return Result.FAIL, f"checker error: {type(exc).__name__}: {exc}"
        return Result.PASS, "; ".join(row.notes)

    def _redact(self, text: str) -> str:
        """``text`` without the API key, as it is or as ``repr`` escapes it (never print it)."""
        for form in {self.api_key, repr(self.api_key)[1:-1]}:
            text = text.replace(form, "<the API key>")
        return text

    # -- checks --------------------------------------------------------------------------------
    def _healthz(self, row: _Row) -> None:
        answer = self._call(row, "GET", "/healthz", key=None, note=" without a key")
        _expect_status(answer, 200)

    def _no_key(self, row: _Row) -> None:
        self._refused(row, None, " without a key")

    def _wrong_key(self, row: _Row) -> None:
        self._refused(row, self.wrong_key, " with a wrong key")

    def _refused(self, row: _Row, key: str | None, note: str) -> None:
        """Every API call with ``key`` (None: none) is refused 401 unauthorized and changes
        nothing: not the hold it names (a live one, made with the right key), nor a new one."""
        held = self._new_hold(row, "auth")
        gid = self._gid("refused")  # a hold the refused POST /v1/holds must not make
        maybe_made = True
        try:
            # The key as X-API-Key, then (when there is one) as a Bearer token, on every call.
            forms: list[tuple[dict[str, Any], str]] = [({"key": key}, note)]
            if key is not None:
                bearer = {"key": None, "headers": {"Authorization": f"Bearer {key}"}}
                forms.append((bearer, f"{note} as Bearer"))
            for sent, how in forms:
                answers = (
                    self._get(row, held.global_id, note=how, **sent),
                    self._hold(row, self.flow.remote_id, 1, gid, note=how, **sent),
                    self._release(row, held.global_id, note=how, **sent),
                    self._invoice(row, held.global_id, self._order_id(), note=how, **sent),
                )
                for answer in answers:
                    _expect_problem(answer, 401, "unauthorized")
            after = self._get(row, held.global_id, note=" after the refused calls")
            body = _expect_status(after, 200)
            acted = {"released": "/v1/releases", "invoiced": "/v1/invoices"}
            if isinstance(body, dict) and body.get("status") in acted:
                raise CheckFailed(
                    f"{after.label} answered status {body['status']!r}: "
                    f"POST {acted[body['status']]}{note} was answered 401 but acted"
                )
            self._expect_same_hold(after, held, 200, self._states(held, after, "held", "expired"))
            after = self._get(row, gid, note=" after the refused hold")
            if after.status == 200:
                raise CheckFailed(
                    f"{after.label} answered 200: POST /v1/holds{note} was answered 401 but "
                    "made the hold"
                )
            _expect_problem(after, 404, "hold_not_found")
            maybe_made = False
        finally:
            self._quiet_release(row, held.global_id)
            if maybe_made:
                self._quiet_release(row, gid)

    # Accepted means answered as documented: an unknown hold is 404 hold_not_found (a 500, a
    # 403 or any other answer that is not 401 is no evidence the key was accepted).
    def _key_accepted(self, row: _Row) -> None:
        answer = self._get(row, self._gid("key"), note=" with the key")
        _expect_problem(answer, 404, "hold_not_found")

    def _bearer_accepted(self, row: _Row) -> None:
        bearer = {"Authorization": f"Bearer {self.api_key}"}
        note = " with the key as Bearer"
        answer = self._get(row, self._gid("bearer"), key=None, headers=bearer, note=note)
        _expect_problem(answer, 404, "hold_not_found")

    def _unknown_path(self, row: _Row) -> None:
        _expect_problem(self._call(row, "GET", "/v1/nope"), 404, "not_found")

    def _wrong_method(self, row: _Row) -> None:
        answer = self._call(row, "GET", "/v1/holds", note=" (a path that takes POST only)")
        _expect_problem(answer, 405, "method_not_allowed")
        allowed = [m.strip().upper() for m in answer.headers.get("Allow", "").split(",")]
        if "POST" not in allowed:
            raise CheckFailed(
                f"{answer.label} answered 405 with Allow: {answer.headers.get('Allow')!r}, "
                "which does not list POST"
            )

    def _not_json(self, row: _Row) -> None:
        """A hold whose body is sent as a form, not JSON: 415, and nothing held."""
        gid = self._gid("not-json")
        form = f"remote_id={quote(self.flow.remote_id)}&quantity=1&global_id={quote(gid)}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        note = " with a form body (Content-Type: application/x-www-form-urlencoded)"
        answer = self._call(row, "POST", "/v1/holds", raw=form.encode(), headers=headers, note=note)
        try:
            _expect_problem(answer, 415, "unsupported_media_type")
        finally:
            if answer.status == 201:
                self._quiet_release(row, gid)
        after = self._get(row, gid, note=f" after the hold{note}")
        _expect_problem(after, 404, "hold_not_found")

    def _malformed_json(self, row: _Row) -> None:
        raw = b'{"remote_id": "x", "quantity": 1, "global_id": '
        answer = self._call(row, "POST", "/v1/holds", raw=raw, note=" with a broken JSON body")
        _expect_problem(answer, 400, "malformed_json")

    def _bad_field(self, row: _Row) -> None:
        """Holds with a field out of the contract's bounds: each a 400, and nothing held."""
        for n, (field, value) in enumerate(BAD_FIELDS):
            gid = self._gid(f"bad-field-{n}")
            body: dict[str, Any] = {"remote_id": self.flow.remote_id, "quantity": 1}
            body["global_id"] = gid
            body[field] = value
            note = f" with {field} {json.dumps(value)}"
            answer = self._call(row, "POST", "/v1/holds", body=body, note=note)
            _expect_problem(answer, 400, "invalid_request")
            after = self._get(row, gid, note=f" after the hold{note}")
            _expect_problem(after, 404, "hold_not_found")

    def _flow_hold(self, row: _Row) -> None:
        self._flow["sold"] = self._new_hold(row, "sold")

    def _flow_hold_retry(self, row: _Row) -> None:
        held: _Held = self._flow["sold"]
        retry = self._hold(row, held.remote_id, held.quantity, held.global_id)
        _expect_replay(retry, held.answer)

    def _flow_get(self, row: _Row) -> None:
        held: _Held = self._flow["sold"]
        answer = self._get(row, held.global_id)
        body = self._expect_same_hold(
            answer, held, 200, self._states(held, answer, "held", "expired")
        )
        for name in ("created_at", "expires_at"):
            if body[name] != held.answer.body[name]:
                raise CheckFailed(
                    f"{answer.label} answered {name}={body[name]!r}, the hold call "
                    f"{held.answer.body[name]!r}"
                )

    def _flow_invoice(self, row: _Row) -> None:
        held: _Held = self._flow["sold"]
        self._flow["available"] = self._count_flow(row)  # before the sale, for _flow_sold_once
        order = self._order_id()
        answer = self._invoice(row, held.global_id, order)
        body = self._expect_same_hold(answer, held, 201, ["invoiced"])
        _expect_fresh(answer)
        if body["tevo_order_id"] != order:
            raise CheckFailed(
                f"{answer.label} answered tevo_order_id={body['tevo_order_id']!r}, sent {order!r}"
            )
        if body["invoiced_at"] is None:
            raise CheckFailed(f"{answer.label} answered an invoiced hold whose invoiced_at is null")
        self._flow["invoice"] = (answer, order)

    def _flow_invoice_retry(self, row: _Row) -> None:
        """Retried as sent, then with the order id as a string: 4711 and "4711" are one order."""
        held: _Held = self._flow["sold"]
        first, order = self._flow["invoice"]
        _expect_replay(self._invoice(row, held.global_id, order), first)
        note = f' with tevo_order_id "{order}" (the same order as a string)'
        _expect_replay(self._invoice(row, held.global_id, str(order), note=note), first)

    def _flow_order_conflict(self, row: _Row) -> None:
        held: _Held = self._flow["sold"]
        _, order = self._flow["invoice"]
        answer = self._invoice(row, held.global_id, order + 1)
        _expect_problem(answer, 409, "order_id_conflict")

    def _flow_release_invoiced(self, row: _Row) -> None:
        held: _Held = self._flow["sold"]
        _expect_problem(self._release(row, held.global_id), 409, "hold_already_invoiced")

    def _flow_sold_once(self, row: _Row) -> None:
        """The flow listing has as many tickets available after the invoice, its retries (two
        above, then identical copies sent at once), the order conflict and the release refused
        as before the invoice: a sale takes tickets already held, once."""
        held: _Held = self._flow["sold"]
        first, order = self._flow["invoice"]
        answered, transport = self._at_once(
            [functools.partial(self._invoice, row, held.global_id, order)] * _COPIES
        )
        if transport:
            raise CheckFailed(f"{len(transport)} of {_COPIES} invoice retries: {transport[0]}")
        for answer in filter(None, answered):  # each call answered (none failed in transport)
            _expect_replay(answer, first)
        self._expect_count(
            row,
            self._flow["available"],
            f"the invoice and its {_COPIES + 2} retries",
            fewer="{n} more were sold (or taken by something else meanwhile)",
            more="the sold hold's tickets came back (or something else gave tickets meanwhile)",
        )

    def _expect_count(self, row: _Row, before: int | str, what: str, fewer: str, more: str) -> None:
        """The flow listing has ``before`` tickets available now, as it had before ``what``;
        ``fewer`` or ``more`` ({n}: how many) says what is wrong when it has not. A count that
        cannot be made (``before`` is why) is not judged."""
        if isinstance(before, str):
            raise _NotRun(f"not counted: {before}")
        after = self._count_flow(row)
        if isinstance(after, str):
            raise _NotRun(f"not counted after {what}: {after}")
        if after != before:
            why = (fewer if after < before else more).format(n=abs(after - before))
            raise CheckFailed(
                f"listing {self.flow.remote_id!r} had {before} tickets available before {what} "
                f"and {after} after: {why}"
            )
        row.notes.append(f"{before} available before and after")

    def _count_flow(self, row: _Row) -> int | str:
        """The tickets available on the flow listing, as a hold of more than it has is refused
        (409 insufficient_quantity, its ``available``), or why they cannot be counted."""
        gid, count = self._gid("count"), _COUNT_PROBE
        answer = self._hold(row, self.flow.remote_id, count, gid, note=f" of {count} tickets")
        if answer.status == 201:
            self._quiet_release(row, gid)
            return f"a hold of {count} tickets was made: too many available to count"
        available = answer.body.get("available") if isinstance(answer.body, dict) else None
        if answer.status == 409 and answer.code == "insufficient_quantity" and available is None:
            return f"{answer.label} answered 409 insufficient_quantity without available (optional)"
        if answer.code != "insufficient_quantity" or type(available) is not int:
            return (
                f"{answer.label} answered {answer.status} {answer.code or ''}".rstrip()
                + f" with available={available!r}, not 409 insufficient_quantity with a count"
            )
        return available

    def _flow_release(self, row: _Row) -> None:
        # Before the hold, for _flow_released_once.
        self._flow["available before release"] = self._count_flow(row)
        held = self._new_hold(row, "released", quantity=2)
        self._flow["released"] = held
        answer = self._release(row, held.global_id)
        body = self._expect_same_hold(
            answer, held, 200, self._states(held, answer, "released", "expired")
        )
        if body["released_at"] is None:
            raise CheckFailed(f"{answer.label} answered a released hold whose released_at is null")
        self._flow["release"] = answer

    def _flow_release_retry(self, row: _Row) -> None:
        held: _Held = self._flow["released"]
        first: _Answer = self._flow["release"]
        answer = self._release(row, held.global_id)
        self._expect_same_hold(answer, held, 200, [first.body["status"]])

    def _flow_invoice_released(self, row: _Row) -> None:
        held: _Held = self._flow["released"]
        answer = self._invoice(row, held.global_id, self._order_id())
        _expect_problem(answer, 409, "hold_released")

    def _flow_released_once(self, row: _Row) -> None:
        """The flow listing has as many tickets available after the hold of two, its release,
        the release's retries (one above, then identical copies sent at once) and the refused
        invoice as before the hold: a release gives the tickets back once."""
        held: _Held = self._flow["released"]
        first: _Answer = self._flow["release"]
        answered, transport = self._at_once(
            [functools.partial(self._release, row, held.global_id)] * _COPIES
        )
        if transport:
            raise CheckFailed(f"{len(transport)} of {_COPIES} release retries: {transport[0]}")
        for answer in filter(None, answered):  # each call answered (none failed in transport)
            self._expect_same_hold(answer, held, 200, [first.body["status"]])
        self._expect_count(
            row,
            self._flow["available before release"],
            f"the hold of {held.quantity}, its release and its {_COPIES + 1} retries",
            fewer="{n} did not come back (or were taken by something else meanwhile)",
            more="{n} more came back than were held: a retry gave them back again, or the hold "
            "took fewer than its quantity (or something else gave tickets meanwhile)",
        )

    def _global_id_conflict(self, row: _Row) -> None:
        """A hold under a global_id that holds another quantity, or another listing, is 409
        global_id_conflict: never a replay of the first hold, nor a second hold."""
        held = self._new_hold(row, "reused")
        try:
            note = " of another quantity under a global_id in use"
            answer = self._hold(row, held.remote_id, held.quantity + 1, held.global_id, note=note)
            _expect_problem(answer, 409, "global_id_conflict")
            note = " of another listing under a global_id in use"
            if self.small is not None:
                answer = self._hold(row, self.small.remote_id, 1, held.global_id, note=note)
                _expect_problem(answer, 409, "global_id_conflict")
            else:
                # No such listing, and the global_id holds another: both are true, and the
                # README orders neither before the other.
                missing = self._missing_listing()
                answer = self._hold(row, missing, held.quantity, held.global_id, note=note)
                if answer.code == "listing_not_found":
                    _expect_problem(answer, 404, "listing_not_found")
                else:
                    _expect_problem(answer, 409, "global_id_conflict")
        finally:
            self._quiet_release(row, held.global_id)

    def _unknown_listing(self, row: _Row) -> None:
        answer = self._hold(row, self._missing_listing(), 1, self._gid("no-listing"))
        _expect_problem(answer, 404, "listing_not_found")

    def _unknown_hold(self, row: _Row) -> None:
        gid = self._gid("no-hold")
        _expect_problem(self._get(row, gid), 404, "hold_not_found")
        _expect_problem(self._release(row, gid), 404, "hold_not_found")
        _expect_problem(self._invoice(row, gid, self._order_id()), 404, "hold_not_found")

    def _at_once(
        self, calls: Sequence[Callable[[], _Answer]]
    ) -> tuple[list[_Answer | None], list[str]]:
        """Make ``calls`` at once, each on its own thread, released together: their answers in
        order (None for a call that got none) and the failures (no answer, or a 429)."""
        barrier = threading.Barrier(len(calls))

        def fire(call: Callable[[], _Answer]) -> _Answer:
            with contextlib.suppress(threading.BrokenBarrierError):  # fire anyway
                barrier.wait(timeout=self.timeout)
            return call()

        answers: list[_Answer | None] = []
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="tevo-check") as pool:
            for future in [pool.submit(fire, call) for call in calls]:
                try:
                    answers.append(future.result())
                except _RateLimited as exc:  # answered, and made nothing
                    answers.append(exc.answer)
                    failures.append(str(exc))
                except CheckFailed as exc:
                    answers.append(None)
                    failures.append(str(exc))
        return answers, failures

    def _concurrent_holds(self, row: _Row) -> None:
        small, count = self._small_listing(), self.concurrency
        gids = [self._gid(f"race-{i}") for i in range(count)]
        calls = [functools.partial(self._hold, row, small.remote_id, 1, gid) for gid in gids]
        answered, transport = self._at_once(calls)
        answers = {gid: a for gid, a in zip(gids, answered, strict=True) if a is not None}
        won = [g for g, a in answers.items() if a.status == 201]
        try:
            return self._judge_race(row, answers, transport, won, small)
        finally:
            # Give the tickets back: every hold that may have been made, in parallel.
            undecided = [g for g in gids if g not in answers]
            with ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
                list(pool.map(lambda g: self._quiet_release(row, g), won + undecided))

    def _judge_race(
        self,
        row: _Row,
        answers: Mapping[str, _Answer],
        transport: Sequence[str],
        won: list[str],
        small: Listing,
    ) -> None:
        count = self.concurrency
        if transport:
            raise CheckFailed(
                f"{len(transport)} of {count} concurrent holds failed: {transport[0]}"
            )
        for gid, answer in answers.items():
            if answer.status == 201:
                _expect_hold(
                    answer,
                    201,
                    global_id=gid,
                    remote_id=small.remote_id,
                    quantity=1,
                    states=["held"],
                )
            else:
                _expect_problem(answer, 409, "insufficient_quantity")
        # A winner's ticket comes back when its hold lapses, so with a TTL shorter than the race
        # later holds may win it again. Only the holds made (by the server's clock, as its
        # answers say) before the first winner's lapsed count; all of them unless the TTL is
        # shorter than the race.
        first_lapse = min((_moment(answers[g], "expires_at") for g in won), default=None)
        counted = [
            g for g in won if first_lapse is None or _moment(answers[g], "created_at") < first_lapse
        ]
        if len(counted) > small.quantity:
            before = "" if len(counted) == len(won) else " before the first winner's lapsed"
            raise CheckFailed(
                f"oversold: {len(counted)} of {count} concurrent one-ticket holds won{before} "
                f"on listing {small.remote_id!r} of {small.quantity} tickets"
            )
        if len(won) < small.quantity:
            raise CheckFailed(
                f"only {len(won)} of {count} concurrent one-ticket holds won on listing "
                f"{small.remote_id!r} of {small.quantity} tickets (were they all available?)"
            )
        if len(counted) < len(won):
            ttl = min(_lifetime(answers[g].body) for g in won)
            if len(counted) < small.quantity:
                raise _NotRun(
                    f"not judged: holds live {ttl:g} s, and the first winner's lapsed before "
                    f"{small.quantity} holds were made"
                )
            row.notes.append(
                f"{len(won) - len(counted)} later holds won tickets of lapsed ones (holds live "
                f"{ttl:g} s): not counted"
            )

    def _quiet_release(self, row: _Row, gid: str) -> None:
        """Cleanup: give back whatever ``gid`` may hold (the check has its verdict already).

        A 429 (the key's rate limit) or a 409 request_in_progress is retried after its
        Retry-After, for up to ``timeout`` seconds; a release that does not get done is
        reported in ``row.stranded``. Done: 200, or a 404 or other 409 (nothing held, or sold).
        """
        give_up = time.monotonic() + self.timeout
        while True:
            try:
                answer = self._release(row, gid, limited_ok=True)
            except CheckFailed as exc:
                row.stranded.append(str(exc))
                return
            busy = answer.status == 429 or answer.code == "request_in_progress"
            wait = _retry_after(answer)
            if not busy or time.monotonic() + wait > give_up:
                break
            time.sleep(wait)
        if not busy and answer.status in (200, 404, 409):
            return
        waited = f" (retried for {self.timeout:g} s)" if busy else ""
        row.stranded.append(
            f"{answer.label} answered {answer.describe()}{_retry_after_text(answer)}{waited}"
        )

    # -- the small listing: its whole stock is known, so tickets can be counted -----------------
    def _small_listing(self) -> Listing:
        if self.small is None:
            raise _NotRun("not run: no small listing (give a second listing)")
        return self.small

    def _more_than_available(self, row: _Row) -> None:
        small = self._small_listing()
        gid, count = self._gid("too-many"), small.quantity + 1
        answer = self._hold(row, small.remote_id, count, gid, note=f" of {count} tickets")
        if answer.status == 201:
            self._quiet_release(row, gid)
            raise CheckFailed(
                f"{answer.label} answered 201: it held more than the {small.quantity} tickets of "
                f"listing {small.remote_id!r} (or the listing has more available than given)"
            )
        body = _expect_problem(answer, 409, "insufficient_quantity")
        self._expect_available(answer, body, small.quantity, " (the listing's stock as given)")

    @staticmethod
    def _expect_available(answer: _Answer, body: Mapping[str, Any], count: int, why: str) -> None:
        """``available``, when the answer has it, is ``count``. It is optional: the README gives
        it only when the POS tells, so the tickets are judged by what holds win, not by it."""
        available = body.get("available")
        if available is None:
            return
        if available != count or isinstance(available, bool):
            raise CheckFailed(
                f"{answer.label} answered 409 insufficient_quantity with "
                f"available={available!r}, expected {count}{why}"
            )

    @staticmethod
    def _expect_tickets(answer: _Answer, after: str, why: str) -> None:
        """Fail with ``why`` if ``answer`` is a refusal for want of tickets."""
        if answer.status == 409 and answer.code == "insufficient_quantity":
            available = answer.body.get("available")
            told = "" if available is None else f" (available {available!r})"
            raise CheckFailed(
                f"{answer.label}{after} answered 409 insufficient_quantity{told}: {why}"
            )

    def _hold_all(self, row: _Row, after: str, patience: float = 0.0) -> _Held:
        """Hold every ticket of the small listing, which must all be available ``after`` what
        came before; a refusal is retried for ``patience`` seconds."""
        small = self._small_listing()
        gid, note = self._gid("all"), f" of all {small.quantity} tickets"
        give_up = time.monotonic() + patience
        while True:
            answer = self._hold(row, small.remote_id, small.quantity, gid, note=note)
            short = answer.status == 409 and answer.code == "insufficient_quantity"
            if not short or time.monotonic() >= give_up:
                break
            time.sleep(0.1)  # a refusal is not remembered: the same call tries again
        waited = f" (for {patience:g} s)" if patience else ""
        self._expect_tickets(answer, f" {after}", f"tickets were not given back{waited}")
        return self._made(answer, gid, small.remote_id, small.quantity)

    def _expect_sold_out(
        self,
        row: _Row,
        since: _Held,
        held: str,
        why: str = "a hold took fewer tickets than its quantity",
    ) -> None:
        """One more ticket of the small listing is refused while ``held`` (since ``since``);
        ``why`` a hold of it may be made after all."""
        small = self._small_listing()
        gid = self._gid("one-more")
        answer = self._hold(row, small.remote_id, 1, gid, note=" of one more ticket")
        if answer.status == 201:
            self._quiet_release(row, gid)
            if self._may_have_lapsed(since, answer):
                ttl = _lifetime(since.answer.body)
                row.notes.append(
                    f"one more ticket was held after the holds before it could lapse (holds live "
                    f"{ttl:g} s): not judged"
                )
                return
            raise CheckFailed(
                f"{answer.label} answered 201 while {held}: {why} (or listing "
                f"{small.remote_id!r} has more than {small.quantity})"
            )
        body = _expect_problem(answer, 409, "insufficient_quantity")
        self._expect_available(answer, body, 0, f" while {held}")

    def _released_come_back(self, row: _Row) -> None:
        small = self._small_listing()
        whole = self._hold_all(row, "after the race's winners were released")
        released = False
        try:
            self._expect_sold_out(row, whole, f"all {small.quantity} were held")
            answer = self._release(row, whole.global_id)
            released = True
            self._expect_same_hold(
                answer, whole, 200, self._states(whole, answer, "released", "expired")
            )
        finally:
            if not released:
                self._quiet_release(row, whole.global_id)
        again = self._hold_all(row, "after the hold of them all was released")
        self._quiet_release(row, again.global_id)

    def _retries_take_once(self, row: _Row) -> None:
        """Identical holds sent at once, then once more: one hold, its tickets taken once."""
        small = self._small_listing()
        gid, rest = self._gid("retried"), self._gid("rest")
        copy = functools.partial(
            self._hold, row, small.remote_id, 1, gid, note=" (identical holds sent at once)"
        )
        answered, transport = self._at_once([copy] * _COPIES)
        try:
            if transport:
                raise CheckFailed(
                    f"{len(transport)} of {_COPIES} identical holds sent at once failed: "
                    f"{transport[0]}"
                )
            answers = [a for a in answered if a is not None]
            fresh = [a for a in answers if a.status == 201 and not a.replayed]
            if len(fresh) != 1:
                raise CheckFailed(
                    f"{len(fresh)} of {_COPIES} identical holds sent at once answered 201 without "
                    "Idempotent-Replayed: true, expected one (the others replay it or answer "
                    "409 request_in_progress)"
                )
            for answer in answers:
                self._expect_tickets(answer, "", "identical holds took tickets more than once")
                if answer.status != 201:
                    _expect_problem(answer, 409, "request_in_progress")
            first = self._made(fresh[0], gid, small.remote_id, 1)
            for answer in answers:
                if answer.status == 201 and answer is not fresh[0]:
                    _expect_replay(answer, fresh[0])
            _expect_replay(self._hold(row, small.remote_id, 1, gid, note=" retried"), fresh[0])
            if small.quantity > 1:
                others = small.quantity - 1
                answer = self._hold(
                    row, small.remote_id, others, rest, note=f" of the other {others}"
                )
                after = f" after a one-ticket hold and {_COPIES} retries of it"
                self._expect_tickets(answer, after, "a retry took tickets again")
                self._made(answer, rest, small.remote_id, others)
            self._expect_sold_out(row, first, "the retried hold and the others held them all")
        finally:
            self._quiet_release(row, gid)
            if small.quantity > 1:
                self._quiet_release(row, rest)
        again = self._hold_all(row, "after the retried hold was released")
        self._quiet_release(row, again.global_id)

    def _expiry(self, row: _Row) -> None:
        """A hold is held until its deadline and lapses then. On the small listing its tickets
        stay taken until then and come back after, once: neither releasing the lapsed hold nor
        invoicing it (410 hold_expired, once its tickets are held again) gives or sells them."""
        if self._ttl is not None and self._ttl > self.max_expiry_wait:
            raise _NotRun(self._too_long(self._ttl))
        if self.small is not None:
            held = self._hold_all(row, "before the expiry check")
        else:
            held = self._new_hold(row, "lapses")
        ttl = _lifetime(held.answer.body)
        if ttl > self.max_expiry_wait:
            self._quiet_release(row, held.global_id)
            raise _NotRun(self._too_long(ttl))
        try:
            self._held_until_deadline(row, held, ttl)
        except BaseException:
            self._quiet_release(row, held.global_id)
            raise
        _sleep_until(held.answer.received + ttl + _EXPIRY_MARGIN)
        answer = self._get(row, held.global_id, note=" after its deadline")
        self._expect_same_hold(answer, held, 200, ["expired"])
        if self.small is None:
            answer = self._release(row, held.global_id)
            self._expect_same_hold(answer, held, 200, ["expired"])
            return
        self._lapsed_gives_back_once(row, held, ttl)

    def _held_until_deadline(self, row: _Row, held: _Held, ttl: float) -> None:
        """Half-way to its deadline (our clock, from when the hold was sent) the hold is held,
        its tickets still taken; judged only where the answers surely came before the deadline
        (a slow machine's late answer may see it lapsed)."""
        _sleep_until(held.answer.sent + ttl / 2)
        answer = self._get(row, held.global_id, note=" before its deadline")
        states = self._states(held, answer, "held", "expired")
        self._expect_same_hold(answer, held, 200, states)
        if len(states) > 1:
            row.notes.append(f"the hold was read too close to its deadline (holds live {ttl:g} s)")
        if self.small is not None:
            self._expect_sold_out(
                row, held, f"all {held.quantity} were held, before their deadline"
            )

    def _lapsed_gives_back_once(self, row: _Row, held: _Held, ttl: float) -> None:
        """``held``, all of the small listing, has lapsed: its tickets come back; held again,
        they are not sold by the lapsed hold's invoice, nor given back again by its release."""
        # A POS's adapter gives lapsed tickets back when the worker releases them: wait for
        # it, within the expiry check's budget.
        patience = max(1.0, self.max_expiry_wait - ttl)
        taken = self._hold_all(row, "after the hold of them all lapsed", patience)
        try:
            self._invoice_lapsed(row, held, taken, ttl)
            answer = self._release(row, held.global_id)
            self._expect_same_hold(answer, held, 200, ["expired"])
            self._expect_sold_out(
                row,
                taken,
                f"all {held.quantity} were held again and the lapsed hold released",
                "the lapsed hold's release gave its tickets back again",
            )
        finally:
            self._quiet_release(row, taken.global_id)
        again = self._hold_all(row, "after the lapsed hold's invoice and release")
        try:
            self._expect_sold_out(
                row,
                again,
                f"all {held.quantity} were held once more",
                "the lapsed hold's tickets came back more than once",
            )
        finally:
            self._quiet_release(row, again.global_id)

    def _invoice_lapsed(self, row: _Row, held: _Held, taken: _Held, ttl: float) -> None:
        """The lapsed ``held`` is invoiced while ``taken`` holds its tickets: 410 hold_expired.

        Sent only while ``taken`` surely holds them (else a sale would be right, and final):
        with time left for twice the round trip that made ``taken``.
        """
        round_trip = taken.answer.received - taken.answer.sent
        lapses = taken.answer.sent + _lifetime(taken.answer.body) - _SLACK
        if time.monotonic() + 2 * round_trip >= lapses:
            row.notes.append(
                f"the lapsed hold was not invoiced: the hold of its tickets could lapse first "
                f"(holds live {ttl:g} s)"
            )
            return
        note = " of the lapsed hold, its tickets held by another"
        answer = self._invoice(row, held.global_id, self._order_id(), note=note)
        if answer.status == 201 and self._may_have_lapsed(taken, answer):
            raise _NotRun(
                f"not judged: {answer.label} answered 201 after the hold of its tickets may have "
                f"lapsed (holds live {ttl:g} s): it was sold, and listing "
                f"{taken.remote_id!r} has {held.quantity} tickets fewer"
            )
        _expect_problem(answer, 410, "hold_expired")

    def _too_long(self, ttl: float) -> str:
        return (
            f"not run: TTL too long (holds live {ttl:g} s, the wait limit is "
            f"{self.max_expiry_wait:g} s: --max-expiry-wait)"
        )

    # -- ids -----------------------------------------------------------------------------------
    def _missing_listing(self) -> str:
        return f"tevo-hold-check-{self.run_id}-no-such-listing"

    def _order_id(self) -> int:
        """A fresh integer order id (TEvo's are integers)."""
        self._ids += 1
        return int(self.run_id[:8], 16) * 1000 + self._ids


def base_url_of(url: str) -> str:
    """``url`` as the base of the checker's calls (no trailing '/'); ValueError unless it is an
    http:// or https:// URL naming a host, to which paths can be appended (``127.0.0.1:8000``
    alone, or a URL ending in '?', would fail every check), with no user in it. The error never
    shows a password."""
    from .settings import redact_url  # as prepare_listings imports: only when used

    shown = repr(redact_url(url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"the URL {shown} cannot be read: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"the URL {shown} must start with http:// or https:// and name a host: "
            "http://127.0.0.1:8000, say"
        )
    if parts.username is not None or parts.password is not None:
        # requests would send them as Basic auth in the Authorization header, in place of the
        # Bearer key of the checks that send one: a correct server failed them
        raise ValueError(
            f"the URL {shown} names a user (user:password@), which would replace the API key in "
            "the Authorization header: give the server's URL without it, and the key with "
            "--api-key"
        )
    if "?" in url or "#" in url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError(
            f"the URL {shown} has a query, a fragment or a blank, which the checks' paths would "
            "be appended after: give the server's base URL alone"
        )
    return url.rstrip("/")


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """The checker's requests as they are: see Checker.__init__."""
    return request


def _sent_key(headers: Mapping[str, str]) -> str | None:
    """The API key of a call's headers (X-API-Key, else the Bearer token), or None."""
    authorization = headers.get("Authorization", "")
    bearer = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None
    return headers.get("X-API-Key", bearer)


def _signature(key: str, request: requests.PreparedRequest) -> str:
    """The ``X-Signature`` of ``request`` under ``key``, as the README defines it: base64 of the
    HMAC-SHA256 of ``METHOD host path?`` then the body as sent (with no body, the query string);
    the host as in the Host header, lower-cased, without its port."""
    assert request.method is not None and request.url is not None
    host = urlsplit(request.url).netloc.rpartition("@")[2].lower()
    host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    path, _, query = request.path_url.partition("?")
    body = request.body.encode() if isinstance(request.body, str) else request.body or b""
    message = f"{request.method.upper()} {host}{path}?".encode() + (body or query.encode())
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _wrong_key(key: str) -> str:
    """A random key that does not contain ``key``: a gateway logging refused keys must not log
    the real one. Made of characters ``key`` lacks, or (when it has them all) shorter than it."""
    alphabet = [c for c in string.ascii_letters + string.digits if c not in key]
    if not alphabet:
        return secrets.token_hex(len(key) // 2 - 1)
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _header_problem(value: str) -> str | None:
    """Why ``value`` cannot travel as an HTTP header's value unchanged (None when it can).

    The answer never quotes ``value``: it is the API key.
    """
    if not value:
        return "it is empty"
    if _LINE_BREAK.search(value):
        if _LINE_BREAK.search(value.rstrip("\r\n")):
            return "it holds a line break"
        return "it ends with a line break (read from a file? strip it)"
    if value != value.strip():
        return "it starts or ends with whitespace (which HTTP strips)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "it holds a control character"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "it holds a character outside Latin-1"
    return None


#: The reason of every check after the one a 429 stopped.
_AFTER_RATE_LIMIT = "not run: the API key's rate limit was hit (see the check that failed)"


#: The least wait between two retries, whatever Retry-After says (0 would retry in a tight loop).
_MIN_RETRY_WAIT = 0.2


def _retry_after(answer: _Answer) -> float:
    """Seconds to wait before a retry: the answer's Retry-After in seconds (at least
    _MIN_RETRY_WAIT), else 1."""
    try:
        seconds = float(answer.headers.get("Retry-After", ""))
    except ValueError:
        return 1.0
    return max(seconds, _MIN_RETRY_WAIT) if 0 <= seconds < float("inf") else 1.0


def _retry_after_text(answer: _Answer) -> str:
    """`` with Retry-After: 3``, or `` without Retry-After``, for a 429's line (else "")."""
    if answer.status != 429 and answer.code != "request_in_progress":
        return ""
    value = answer.headers.get("Retry-After")
    return " without Retry-After" if value is None else f" with Retry-After: {value.strip()[:40]}"


def _sleep_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` is ``moment`` (no sleep if it is past)."""
    wait = moment - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def _moment(answer: _Answer, name: str) -> datetime:
    """A time field of a hold ``answer`` (already checked to be one)."""
    moment = _utc_time(answer.body[name])
    assert moment is not None
    return moment


def _lifetime(body: Mapping[str, Any]) -> float:
    """Seconds between a hold's created_at and expires_at (both already checked)."""
    created, expires = _utc_time(body["created_at"]), _utc_time(body["expires_at"])
    assert created is not None and expires is not None
    return (expires - created).total_seconds()


def _parse(content_type: str, content: bytes) -> tuple[Any, str | None]:
    """(the JSON body, None), or (None, why it is not a JSON answer)."""
    is_json = content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
    if not is_json:
        return None, f"{content_type or 'with no Content-Type'}, not JSON"
    try:
        return json.loads(content.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"{content_type} that does not parse: {exc}"


def _root_cause(exc: BaseException) -> str:
    """The innermost error of a requests exception, in one line (``ConnectionRefusedError: ...``).

    requests wraps urllib3's errors in ``args[0]``, urllib3 its causes in ``reason``.
    """
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    lines = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return line if len(line) <= 160 else line[:157] + "..."


def run_checks(
    base_url: str,
    api_key: str,
    *,
    listings: Sequence[Listing],
    concurrency: int = DEFAULT_CONCURRENCY,
    max_expiry_wait: float = DEFAULT_MAX_EXPIRY_WAIT,
    timeout: float = DEFAULT_TIMEOUT,
    sign: bool = False,
) -> Report:
    """Run every check against ``base_url`` and return the report.

    ``listings`` are the flow listing and, optionally, the small listing for the concurrency
    check, in that order (see the module docstring). Raises ValueError for listings that cannot
    work or an API key that cannot be sent as a header; the server's faults are in the report,
    never raised.
    """
    if not 1 <= len(listings) <= 2:
        raise ValueError("give one or two listings: the flow listing, then the small listing")
    with Checker(
        base_url,
        api_key,
        flow_listing=listings[0],
        small_listing=listings[1] if len(listings) > 1 else None,
        concurrency=concurrency,
        max_expiry_wait=max_expiry_wait,
        timeout=timeout,
        sign=sign,
    ) as checker:
        return checker.run()


def prepare_listings(
    redis_url: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    flow_tickets: int = 10,
    environ: Mapping[str, str] | None = None,
) -> tuple[Listing, Listing]:
    """Stock two fresh listings in the reference inventory of the Redis at ``redis_url``.

    Returns (flow listing of ``flow_tickets``, small listing of ``max(1, concurrency // 4)``).
    Other ``TEVO_HOLD_*`` settings (the key prefix above all) come from ``environ`` (default
    the process environment), so they must match the server's. Raises ConfigurationError for the
    embedded ``memory://`` URL (its state is inside the server process) or bad settings, and
    Unavailable when Redis cannot be reached.
    """
    from . import errors
    from .adapters.redis_inventory import RedisInventoryAdapter
    from .connection import connect
    from .service import build_service
    from .settings import PREFIX, Settings

    env = dict(os.environ if environ is None else environ)
    env[PREFIX + "REDIS_URL"] = redis_url
    env.setdefault(PREFIX + "API_KEYS", "unused-by-the-checker")
    settings = Settings.from_env(env)
    if settings.embedded:
        raise errors.ConfigurationError(
            "preparing listings needs the server's Redis: the embedded memory:// state lives "
            "inside the server's process (give listings instead)"
        )
    client = connect(settings)
    try:
        adapter = build_service(settings, client=client).adapter
        if not isinstance(adapter, RedisInventoryAdapter):  # pragma: no cover - build_service's
            raise errors.ConfigurationError("preparing listings needs the reference inventory")
        run_id = uuid.uuid4().hex[:12]
        flow = Listing(f"tevo-hold-check-{run_id}-flows", flow_tickets)
        small = Listing(f"tevo-hold-check-{run_id}-small", max(1, concurrency // 4))
        for listing in (flow, small):
            adapter.set_quantity(listing.remote_id, listing.quantity)
        return flow, small
    finally:
        client.close()
