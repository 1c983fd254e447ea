"""``tevo-hold check``: the conformance checker, against our server and deliberately broken ones.

Servers run in this process: a Flask app served by werkzeug's threaded server on a free loopback
port, in a thread. Ours is the real app on a private redis-server; the others are a small, naive
implementation of the same contract written here (a dict inventory), clean or with one flaw
(:class:`Flaws`): it oversells (no atomicity: read the stock, sleep, write it), answers Flask's
HTML error pages, ignores the API key, ... The clean one must pass every check (the checker
judges the contract, not our implementation); each flawed one must fail exactly the checks its
flaw breaks, with the line that says why, and make the command exit non-zero.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

from tevo_hold import RedisInventoryAdapter, Settings, build_service, checker, create_app
from tevo_hold.checker import Listing
from tevo_hold.cli import main

from .servers import ROOT, free_port, serving

API_KEY = "checker-key"
ROW = re.compile(r"^(?P<name>\S.*?)\s{2,}(?P<result>PASS|FAIL|SKIP)\b(?P<rest>.*)$")
EVERY_CHECK = 30
PROBLEM = "application/problem+json"


# -- serving a WSGI app in a thread -------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """``app`` on werkzeug's threaded server on a free loopback port; yields its base URL."""
    server = make_server(
        "127.0.0.1", free_port(), app, threaded=True, request_handler=_QuietHandler
    )
    with serving(server):
        yield f"http://127.0.0.1:{server.server_port}"


def check(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """``tevo-hold check URL ARGS...`` in process (the key from the environment)."""
    full_env = {"TEVO_HOLD_CHECK_API_KEY": API_KEY, **(env or {})}
    return CliRunner().invoke(main, ["check", url, *args], env=full_env)


def rows(output: str) -> dict[str, tuple[str, str]]:
    """The table's rows: check name → (PASS/FAIL/SKIP, the rest of the line)."""
    found = {}
    for line in output.splitlines():
        match = ROW.match(line)
        if match and match["name"] != "CHECK":
            found[match["name"]] = (match["result"], match["rest"])
    return found


def failed(output: str) -> set[str]:
    return {name for name, (result, _) in rows(output).items() if result == "FAIL"}


# -- our server, on a real Redis ------------------------------------------------------------------


@pytest.fixture
def our_server(redis_url: str) -> Callable[[float], Any]:
    """A factory: our app with holds living ``ttl`` seconds, on the session's redis-server."""

    @contextmanager
    def start(ttl: float, **extra_config: str) -> Iterator[str]:
        client = redis.Redis.from_url(redis_url)
        settings = Settings(redis_url=redis_url, api_keys=(API_KEY,), hold_ttl=ttl)
        service = build_service(settings, client=client)
        # Many checker runs with one key within a minute: no rate limit in the way.
        config = {
            "TEVO_HOLD_API_KEYS": API_KEY,
            "TEVO_HOLD_HOLD_TTL": str(ttl),
            "TEVO_HOLD_RATE_LIMIT": "off",
            **extra_config,
        }
        app = create_app(config, service=service)
        try:
            with serve(app) as url:
                yield url
        finally:
            client.close()

    return start


@pytest.mark.slow
def test_our_server_passes_with_prepared_listings(
    our_server: Callable[[float], Any], redis_url: str
) -> None:
    with our_server(900) as url:
        result = check(url, "--prepare", "--redis-url", redis_url)
    print(result.output)
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert len(table) == EVERY_CHECK, result.output
    expiry = table.pop("expiry: lapsed hold -> expired")
    assert expiry[0] == "SKIP" and "not run: TTL too long (holds live 900 s" in expiry[1]
    assert {r for r, _ in table.values()} == {"PASS"}, result.output
    assert f"PASS: {EVERY_CHECK - 1} of {EVERY_CHECK} checks passed, 1 not run" in result.output


def test_the_readmes_check_of_a_fresh_demo_server_passes(monkeypatch) -> None:
    """The README's ``tevo-hold check`` line, as written, against a fresh embedded demo server
    (``make run``'s: no Redis, the demo key and listings), served here on another port."""
    readme = (ROOT / "README.md").read_text("utf-8")
    [line] = [x for x in readme.splitlines() if x.startswith(".venv/bin/tevo-hold check ")]
    command, url, *args = shlex.split(line)[1:]
    assert (command, url) == ("check", "http://127.0.0.1:8000")
    for name in [k for k in os.environ if k.startswith("TEVO_HOLD_")]:
        monkeypatch.delenv(name)
    app = create_app()
    try:
        with serve(app) as served:
            result = CliRunner().invoke(main, [command, served, *args])
    finally:
        app.extensions["tevo_hold"].service.close()
    assert result.exit_code == 0, result.output
    assert f"PASS: {EVERY_CHECK - 1} of {EVERY_CHECK} checks passed, 1 not run" in result.output, (
        result.output
    )


@pytest.mark.slow
def test_our_server_passes_the_expiry_check_with_a_short_ttl(
    our_server: Callable[[float], Any], redis_url: str
) -> None:
    with our_server(1) as url:
        started = time.monotonic()
        result = check(url, "--prepare", env={"TEVO_HOLD_REDIS_URL": redis_url})
        elapsed = time.monotonic() - started
    print(result.output)
    assert result.exit_code == 0, result.output
    assert {r for r, _ in rows(result.output).values()} == {"PASS"}, result.output
    assert f"PASS: {EVERY_CHECK} of {EVERY_CHECK} checks passed" in result.output
    assert elapsed >= 1.0  # it did wait for the hold to lapse


@pytest.mark.slow
def test_a_server_that_wants_signed_requests_is_said_so_and_passes_them_signed(
    our_server: Callable[..., Any], redis_url: str
) -> None:
    with our_server(900, TEVO_HOLD_REQUIRE_SIGNATURE="true") as url:
        unsigned = check(url, "--prepare", "--redis-url", redis_url)
        signed = check(url, "--prepare", "--redis-url", redis_url, "--sign")
    assert unsigned.exit_code == 1, unsigned.output
    _, reason = rows(unsigned.output)["auth: X-API-Key accepted"]
    assert reason.endswith(
        " with the key answered 401 invalid_signature, expected 404 hold_not_found "
        "(the server requires signed requests: sign them, --sign)"
    ), unsigned.output
    assert "key was refused" not in unsigned.output
    assert signed.exit_code == 0, signed.output
    assert f"PASS: {EVERY_CHECK - 1} of {EVERY_CHECK} checks passed, 1 not run" in signed.output


@pytest.mark.slow
def test_prepared_listings_are_fresh_and_the_small_one_is_left_as_found(
    our_server: Callable[[float], Any], redis_url: str
) -> None:
    """Through the library: two runs on their own fresh listings; the race's winners released."""
    from tevo_hold.checker import prepare_listings, run_checks

    client = redis.Redis.from_url(redis_url)
    adapter = build_service(Settings(redis_url=redis_url, api_keys=("x",)), client=client).adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    try:
        with our_server(900) as url:
            first = prepare_listings(redis_url, concurrency=8)
            second = prepare_listings(redis_url, concurrency=8)
            assert {x.remote_id for x in first}.isdisjoint(x.remote_id for x in second)
            report = run_checks(url, API_KEY, listings=first, concurrency=8)
        assert report.ok, report.format()
        race = report["concurrent holds: no oversell"]
        assert race.passed and len(race.calls) >= 8 + 2  # the holds, then the winners released
        assert all(c.latency_ms > 0 and c.status is not None for c in race.calls)
        flow, small = first
        assert small.quantity == 2
        assert adapter.stock(small.remote_id).available == small.quantity
        assert adapter.stock(flow.remote_id).sold == 1  # the hold -> invoice flow
    finally:
        client.close()


# -- a naive implementation of the contract, clean or with one flaw --------------------------------


@dataclass(frozen=True)
class Flaws:
    oversell: bool = False  # no atomicity: read the stock, sleep, write it
    html_errors: bool = False  # Flask's HTML error pages
    ignore_key: bool = False  # every call goes through, whatever its key
    bearer_500: bool = False  # every call with the right key as Bearer answers 500
    open_invoices: bool = False  # POST /v1/invoices needs no key
    acts_then_refuses: bool = False  # a POST with a bad key acts, then answers 401
    release_leaks: bool = False  # a release never gives the tickets back
    lapse_leaks: bool = False  # a lapsed hold never gives the tickets back
    checks_one: bool = False  # a hold is refused only when no ticket is left
    takes_one: bool = False  # a hold takes one ticket, whatever its quantity
    retry_takes_again: bool = False  # a hold's retry replays it, and takes its tickets again
    copies_race: bool = False  # identical holds at once each make the hold (no in-progress)
    negative_ok: bool = False  # a negative quantity is a hold (it gives tickets)
    invoice_retry_sells: bool = False  # an invoice's retry replays it, and sells again
    refused_release_gives_back: bool = False  # a release of an invoiced hold: 409, tickets back
    conflict_quantity_only: bool = False  # a hold of another listing under a global_id replays it
    order_id_typed: bool = False  # 4711 and "4711" are two orders (409 order_id_conflict)
    bearer_opens_posts: bool = False  # any Bearer token opens POST calls
    times: str = ""  # times in another format: "basic", "offset" or "week" (see _rfc3339)
    release_retry_gives_back: bool = False  # each release of a released hold gives back again
    lapses_early: bool = False  # a hold lapses at a quarter of its TTL (expires_at says all)
    lapsed_release_gives_back: bool = False  # releasing a lapsed hold gives its tickets again
    lapsed_invoice_sells: bool = False  # a lapsed hold is sold even when its tickets are gone


def _now() -> float:
    return time.time()


def _rfc3339(ts: float | None, style: str = "") -> str | None:
    """``ts`` as RFC 3339 UTC with milliseconds, or (``style``) ISO 8601 forms that are not."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, tz=UTC)
    ms = f"{moment.microsecond // 1000:03d}"
    if style == "basic":  # 20261123T120000.123Z
        return moment.strftime("%Y%m%dT%H%M%S.") + ms + "Z"
    if style == "offset":  # 2026-11-23T17:30:00.123+05:30
        india = timezone(timedelta(hours=5, minutes=30))
        return moment.astimezone(india).isoformat(timespec="milliseconds")
    if style == "week":  # 2026-W48-1T12:00:00.123Z
        year, week, day = moment.isocalendar()
        return f"{year}-W{week:02d}-{day}T" + moment.strftime("%H:%M:%S.") + ms + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + ms + "Z"


class _Problem(Exception):
    def __init__(self, status: int, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.status, self.code, self.extra = status, code, extra


def naive_app(
    stock: dict[str, int],
    *,
    ttl: float = 900.0,
    flaws: Flaws = Flaws(),
    refused_keys: list[str] | None = None,
    slow: Mapping[str, float] | None = None,
    tells_available: bool = True,
    rate_limit: tuple[int, float] | None = None,
) -> Flask:
    """Another implementation of the README's contract, in memory: right unless ``flaws`` say.

    With ``tells_available`` False its refusals for want of tickets never say how many are
    available, as a POS that does not tell (the README allows it). With ``rate_limit`` (holds,
    seconds) the key's rate limit is spent after that many holds of ``naive:small``: every call
    with it is then answered 429 rate_limited, ``Retry-After: 1``, for that many seconds.

    The keys it refuses are appended to ``refused_keys`` (as a gateway's log would keep them).
    A hold of a listing in ``slow`` takes that many seconds, one at a time.
    """
    app = Flask("naive")
    lock = threading.RLock()
    holds: dict[str, dict[str, Any]] = {}
    running: set[str] = set()  # the global_ids of holds being made
    limited = {"holds": 0, "until": 0.0}  # rate_limit: holds of naive:small, when it ends

    def answer(body: Any, status: int, replayed: bool = False) -> Response:
        response = Response(json.dumps(body), status, mimetype="application/json")
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    @app.errorhandler(_Problem)
    def problem(exc: _Problem) -> Response:
        body = {"type": "about:blank", "title": exc.code, "status": exc.status, "code": exc.code}
        extra = {k: v for k, v in exc.extra.items() if tells_available or k != "available"}
        response = Response(json.dumps({**body, **extra}), exc.status, mimetype=PROBLEM)
        if "retry_after" in extra:
            response.headers["Retry-After"] = str(extra["retry_after"])
        return response

    if not flaws.html_errors:

        @app.errorhandler(HTTPException)
        def http_error(exc: HTTPException) -> Response:
            codes = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}
            code = codes.get(exc.code or 0)
            if exc.code == 400:
                code = "malformed_json"
            response = problem(_Problem(exc.code or 500, code or "http_error"))
            allow = dict(exc.get_headers()).get("Allow")
            if allow:
                response.headers["Allow"] = allow
            return response

    def refused() -> bool:
        key = request.headers.get("X-API-Key")
        if key is None and request.headers.get("Authorization", "").startswith("Bearer "):
            key = request.headers["Authorization"][len("Bearer ") :]
        if key != API_KEY and refused_keys is not None and key is not None:
            refused_keys.append(key)
        return key != API_KEY

    @app.before_request
    def authenticate() -> None:
        if request.path == "/healthz" or flaws.ignore_key:
            return
        if flaws.open_invoices and request.path == "/v1/invoices":
            return
        if flaws.acts_then_refuses and request.method == "POST":
            return  # judged after the call: see refuse_late
        bearer = request.headers.get("Authorization", "").startswith("Bearer ")
        if flaws.bearer_opens_posts and request.method == "POST" and bearer:
            return
        if flaws.bearer_500 and request.headers.get("Authorization") == f"Bearer {API_KEY}":
            raise _Problem(500, "internal_error")
        if refused():
            raise _Problem(401, "unauthorized")
        if rate_limit is not None:
            with lock:
                data = request.get_json(silent=True)
                small = isinstance(data, dict) and data.get("remote_id") == "naive:small"
                if request.path == "/v1/holds" and small:
                    limited["holds"] += 1
                    if limited["holds"] == rate_limit[0] + 1:
                        limited["until"] = _now() + rate_limit[1]
                if _now() < limited["until"]:
                    raise _Problem(429, "rate_limited", retry_after=1)

    if flaws.acts_then_refuses:

        @app.after_request
        def refuse_late(response: Response) -> Response:
            if request.method == "POST" and refused():
                return problem(_Problem(401, "unauthorized"))
            return response

    def body_of(*fields: str) -> dict[str, Any]:
        data = request.get_json()  # a bad body raises werkzeug's 400 (HTML unless handled)
        if not isinstance(data, dict) or any(f not in data for f in fields):
            raise _Problem(400, "invalid_request")
        for name in fields:
            value = data[name]
            if name == "quantity":
                least = -10_000 if flaws.negative_ok else 1
                ok = type(value) is int and least <= value <= 10_000 and value != 0
            elif name == "tevo_order_id":
                ok = (type(value) is int and value > 0) or (isinstance(value, str) and value != "")
            else:
                ok = isinstance(value, str) and value != ""
            if not ok:
                raise _Problem(400, "invalid_request", errors={name: ["invalid"]})
        return data

    def settle(rec: dict[str, Any]) -> dict[str, Any]:
        """Lapse a held hold whose deadline passed: its tickets go back (under ``lock``)."""
        lapses = rec["created"] + ttl / 4 if flaws.lapses_early else rec["expires"]
        if rec["status"] == "held" and _now() >= lapses:
            rec["status"] = "expired"
            stock[rec["remote_id"]] += 0 if flaws.lapse_leaks else rec["quantity"]
        return rec

    def view(rec: dict[str, Any]) -> dict[str, Any]:
        return {
            "global_id": rec["global_id"],
            "remote_id": rec["remote_id"],
            "quantity": rec["quantity"],
            "status": rec["status"],
            "created_at": _rfc3339(rec["created"], flaws.times),
            "expires_at": _rfc3339(rec["expires"], flaws.times),
            "tevo_order_id": rec.get("order"),
            "invoiced_at": _rfc3339(rec.get("invoiced"), flaws.times),
            "released_at": _rfc3339(rec.get("released"), flaws.times),
        }

    def take(remote_id: str, quantity: int) -> None:
        if flaws.oversell:  # check, then act: two requests both see the last ticket
            available = stock[remote_id]
            time.sleep(0.02)
            if available < quantity:
                raise _Problem(409, "insufficient_quantity", available=available)
            stock[remote_id] = available - quantity
            return
        with lock:
            time.sleep((slow or {}).get(remote_id, 0.0))
            for rec in holds.values():  # lapsed holds give their tickets back at once
                settle(rec)
            if stock[remote_id] < (1 if flaws.checks_one else quantity):
                raise _Problem(409, "insufficient_quantity", available=stock[remote_id])
            stock[remote_id] -= 1 if flaws.takes_one else quantity

    def existing(gid: str) -> dict[str, Any]:
        if gid not in holds:
            raise _Problem(404, "hold_not_found")
        return settle(holds[gid])

    @app.get("/healthz")
    def healthz() -> Response:
        return answer({"status": "ok"}, 200)

    @app.post("/v1/holds")
    def hold() -> Response:
        data = body_of("remote_id", "quantity", "global_id")
        gid, rid, qty = data["global_id"], data["remote_id"], data["quantity"]
        with lock:
            if gid in holds:
                rec = holds[gid]
                same = rec["quantity"] == qty
                if not same or (rec["remote_id"] != rid and not flaws.conflict_quantity_only):
                    raise _Problem(409, "global_id_conflict")
                if flaws.retry_takes_again:
                    stock[rid] -= qty
                return answer(rec["first"], 201, replayed=True)
            if rid not in stock:
                raise _Problem(404, "listing_not_found")
            if gid in running:
                raise _Problem(409, "request_in_progress")
            if not flaws.copies_race:
                running.add(gid)
        if flaws.copies_race and qty == 1:
            time.sleep(0.1)  # the other copies find no hold yet either (fewer sleeps: one ticket)
        try:
            take(rid, qty)
            created = _now()
            rec = {"global_id": gid, "remote_id": rid, "quantity": qty, "status": "held"}
            rec.update(created=created, expires=created + ttl)
            rec["first"] = view(rec)
            with lock:
                holds[gid] = rec
        finally:
            with lock:
                running.discard(gid)
        return answer(rec["first"], 201)

    @app.get("/v1/holds/<path:gid>")
    def get_hold(gid: str) -> Response:
        with lock:
            return answer(view(existing(gid)), 200)

    @app.post("/v1/releases")
    def release() -> Response:
        gid = body_of("global_id")["global_id"]
        with lock:
            rec = existing(gid)
            if rec["status"] == "invoiced":
                if flaws.refused_release_gives_back:
                    stock[rec["remote_id"]] += rec["quantity"]
                raise _Problem(409, "hold_already_invoiced")
            again = (flaws.release_retry_gives_back and rec["status"] == "released") or (
                flaws.lapsed_release_gives_back and rec["status"] == "expired"
            )
            if rec["status"] == "held":
                rec["status"] = "released"
                stock[rec["remote_id"]] += 0 if flaws.release_leaks else rec["quantity"]
            elif again:
                stock[rec["remote_id"]] += rec["quantity"]
            rec.setdefault("released", _now())
            return answer(view(rec), 200)

    @app.post("/v1/invoices")
    def invoice() -> Response:
        data = body_of("global_id", "tevo_order_id")
        gid, order = data["global_id"], data["tevo_order_id"]
        with lock:
            rec = existing(gid)
            if rec["status"] == "invoiced":
                same = (
                    rec["order"] == order
                    if flaws.order_id_typed
                    else str(rec["order"]) == str(order)
                )
                if not same:
                    raise _Problem(409, "order_id_conflict")
                if flaws.invoice_retry_sells:
                    stock[rec["remote_id"]] -= rec["quantity"]
                return answer(view(rec), 201, replayed=True)
            if "released" in rec:
                raise _Problem(409, "hold_released")
            if rec["status"] == "expired":
                if stock[rec["remote_id"]] < rec["quantity"] and not flaws.lapsed_invoice_sells:
                    raise _Problem(410, "hold_expired")
                stock[rec["remote_id"]] -= rec["quantity"]
            rec.update(status="invoiced", order=order, invoiced=_now())
            return answer(view(rec), 201)

    return app


NAIVE_LISTINGS = ("--listing", "naive:flows:10", "--listing", "naive:small:3")


def naive_stock() -> dict[str, int]:
    return {"naive:flows": 10, "naive:small": 3}


@pytest.mark.slow
def test_another_clean_implementation_passes_every_check() -> None:
    """The checker judges the contract: a wholly different implementation passes too."""
    with serve(naive_app(naive_stock(), ttl=1.0)) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    print(result.output)
    assert result.exit_code == 0, result.output
    assert f"PASS: {EVERY_CHECK} of {EVERY_CHECK} checks passed" in result.output
    assert "listing 'naive:small' (3 tickets), 12 holds at once" in result.output


BAD_KEY_ROWS = {"auth: no key -> 401", "auth: wrong key -> 401"}


def bad_key_lines(pattern: str) -> list[str]:
    """``pattern`` for the no-key row and the wrong-key row: KEY is how the call was keyed."""
    return [pattern.replace("KEY", how) for how in ("without a key", "with a wrong key")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flaws", "failing", "lines"),
    [
        pytest.param(
            Flaws(oversell=True),
            {"concurrent holds: no oversell"},
            [
                r"oversold: (\d+) of 12 concurrent one-ticket holds won on listing "
                r"'naive:small' of 3 tickets"
            ],
            id="oversells",
        ),
        pytest.param(
            Flaws(release_leaks=True),
            {
                "stock: a release and its retries give back once",
                "stock: released tickets can be held again",
            },
            [
                r"listing 'naive:flows' had (\d+) tickets available before the hold of 2, its "
                r"release and its 5 retries and \d+ after: 2 did not come back",
                r"POST /v1/holds of all 3 tickets after the race's winners were released "
                r"answered 409 insufficient_quantity \(available 0\): tickets were not given back",
            ],
            id="releases-leak",
        ),
        pytest.param(
            Flaws(checks_one=True),
            {"stock: more than available -> 409 insufficient_quantity"},
            [
                r"POST /v1/holds of 4 tickets answered 201: it held more than the 3 tickets of "
                r"listing 'naive:small'"
            ],
            id="checks-for-one-ticket",
        ),
        pytest.param(
            Flaws(takes_one=True),
            {
                "stock: a release and its retries give back once",
                "stock: released tickets can be held again",
            },
            [
                r"before the hold of 2, its release and its 5 retries and \d+ after: 1 more came "
                r"back than were held",
                r"POST /v1/holds of one more ticket answered 201 while all 3 were held: a hold "
                r"took fewer tickets than its quantity",
            ],
            id="takes-one-ticket",
        ),
        pytest.param(
            Flaws(checks_one=True, takes_one=True),
            {"stock: more than available -> 409 insufficient_quantity"},
            [r"POST /v1/holds of 4 tickets answered 201: it held more than the 3 tickets"],
            id="ignores-the-quantity",
        ),
        pytest.param(
            Flaws(retry_takes_again=True),
            {"stock: a retried hold takes its tickets once"},
            [
                r"POST /v1/holds of the other 2 after a one-ticket hold and 4 retries of it "
                r"answered 409 insufficient_quantity \(available -?\d\): a retry took tickets "
                r"again"
            ],
            id="retries-take-again",
        ),
        pytest.param(
            Flaws(copies_race=True),
            {"stock: a retried hold takes its tickets once"},
            [
                r"[234] of 4 identical holds sent at once answered 201 without "
                r"Idempotent-Replayed: true, expected one"
            ],
            id="identical-holds-at-once-each-hold",
        ),
        pytest.param(
            Flaws(invoice_retry_sells=True),
            {"stock: an invoice and its retries sell once"},
            [
                r"listing 'naive:flows' had (\d+) tickets available before the invoice and its 6 "
                r"retries and \d+ after: 6 more were sold"
            ],
            id="invoice-retries-sell-again",
        ),
        pytest.param(
            Flaws(release_retry_gives_back=True),
            {"stock: a release and its retries give back once"},
            [
                r"listing 'naive:flows' had (\d+) tickets available before the hold of 2, its "
                r"release and its 5 retries and \d+ after: 10 more came back than were held: a "
                r"retry gave them back again"
            ],
            id="release-retries-give-back-again",
        ),
        pytest.param(
            Flaws(refused_release_gives_back=True),
            {"stock: an invoice and its retries sell once"},
            [r"\d+ after: the sold hold's tickets came back"],
            id="refused-release-gives-tickets-back",
        ),
        pytest.param(
            Flaws(negative_ok=True),
            {"errors: bad field -> 400 invalid_request"},
            [r"POST /v1/holds with quantity -1 answered 201"],
            id="negative-quantities",
        ),
        pytest.param(
            Flaws(html_errors=True),
            {
                "errors: unknown path -> 404 JSON",
                "errors: wrong method -> 405 JSON",
                "errors: body not JSON -> 415 JSON",
                "errors: bad JSON -> 400 malformed_json",
            },
            [
                r"GET /v1/nope answered 404 text/html, not JSON",
                r"GET /v1/holds \(a path that takes POST only\) answered 405 text/html, not JSON",
                r"POST /v1/holds with a form body \(Content-Type: "
                r"application/x-www-form-urlencoded\) answered 415 text/html, not JSON",
                r"POST /v1/holds with a broken JSON body answered 400 text/html, not JSON",
            ],
            id="html-errors",
        ),
        pytest.param(
            Flaws(ignore_key=True),
            BAD_KEY_ROWS,
            bad_key_lines(
                r"GET /v1/holds/tevo-hold-check-\S+ KEY answered 200 \(status held\), "
                r"expected 401 unauthorized"
            ),
            id="ignores-the-key",
        ),
        pytest.param(
            Flaws(open_invoices=True),
            BAD_KEY_ROWS,
            bad_key_lines(
                r"POST /v1/invoices KEY answered 201 \(status invoiced\), expected 401 unauthorized"
            ),
            id="invoices-without-a-key",
        ),
        pytest.param(
            Flaws(acts_then_refuses=True),
            BAD_KEY_ROWS,
            bad_key_lines(r"answered status 'released': POST /v1/releases KEY was answered 401"),
            id="acts-then-refuses",
        ),
        pytest.param(
            Flaws(bearer_500=True),
            {"auth: Bearer key accepted"},
            [
                r"GET /v1/holds/tevo-hold-check-\S+ with the key as Bearer answered 500 "
                r"internal_error, expected 404 hold_not_found",
            ],
            id="fails-bearer-calls",
        ),
        pytest.param(
            Flaws(bearer_opens_posts=True),
            {"auth: wrong key -> 401"},
            [
                r"POST /v1/holds with a wrong key as Bearer answered 201 \(status held\), "
                r"expected 401 unauthorized"
            ],
            id="any-bearer-token-opens-the-posts",
        ),
        pytest.param(
            Flaws(conflict_quantity_only=True),
            {"global_id reused -> 409 global_id_conflict"},
            [
                r"POST /v1/holds of another listing under a global_id in use answered 201 "
                r"\(status held\), expected 409 global_id_conflict"
            ],
            id="a-hold-of-another-listing-replays-the-first",
        ),
        pytest.param(
            Flaws(order_id_typed=True),
            {"invoice retry -> replay"},
            [
                r'POST /v1/invoices with tevo_order_id "\d+" \(the same order as a string\) '
                r"retry answered 409 order_id_conflict, the first call 201 \(status invoiced\)"
            ],
            id="the-order-id-as-a-string-is-another-order",
        ),
    ],
)
def test_a_broken_server_fails_with_a_clear_line(
    flaws: Flaws, failing: set[str], lines: Sequence[str]
) -> None:
    with serve(naive_app(naive_stock(), flaws=flaws)) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    print(result.output)
    assert result.exit_code == 1, result.output
    assert failed(result.output) == failing, result.output
    for line in lines:
        assert re.search(line, result.output), f"{line!r} not in:\n{result.output}"
    assert re.search(rf"^FAIL: {len(failing)} of {EVERY_CHECK} checks failed", result.output, re.M)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("style", "example"),
    [
        pytest.param("basic", r"\d{8}T\d{6}\.\d{3}Z", id="basic"),
        pytest.param("offset", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+05:30", id="offset"),
        pytest.param("week", r"\d{4}-W\d\d-\dT\d\d:\d\d:\d\d\.\d{3}Z", id="week"),
    ],
)
def test_times_other_than_rfc_3339_utc_fail(style: str, example: str) -> None:
    """ISO 8601's basic format, another offset than UTC's, a week date: Python reads each as a
    time, and none is the RFC 3339 UTC time the README promises. Every hold is refused, so
    every check that makes one fails (the first, with the line that says why)."""
    with serve(naive_app(naive_stock(), flaws=Flaws(times=style))) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    assert result.exit_code == 1, result.output
    result_of_hold, reason = rows(result.output)["hold -> 201 held"]
    assert result_of_hold == "FAIL", result.output
    assert re.search(
        rf"POST /v1/holds answered created_at='{example}', not an RFC 3339 UTC time", reason
    ), result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flaws", "line"),
    [
        pytest.param(
            Flaws(lapses_early=True),
            r"GET /v1/holds/\S+ before its deadline answered status 'expired', expected held",
            id="lapses-before-its-expires-at",
        ),
        pytest.param(
            Flaws(lapsed_invoice_sells=True),
            r"POST /v1/invoices of the lapsed hold, its tickets held by another answered 201 "
            r"\(status invoiced\), expected 410 hold_expired",
            id="sells-a-lapsed-hold-whose-tickets-are-gone",
        ),
        pytest.param(
            Flaws(lapsed_release_gives_back=True),
            r"POST /v1/holds of one more ticket answered 201 while all 3 were held again and the "
            r"lapsed hold released: the lapsed hold's release gave its tickets back again",
            id="releasing-a-lapsed-hold-gives-its-tickets-back-again",
        ),
    ],
)
def test_a_server_whose_holds_lapse_wrongly_fails(flaws: Flaws, line: str) -> None:
    """Holds live 1 s: the expiry check runs, and fails alone, with the line that says why."""
    with serve(naive_app(naive_stock(), ttl=1.0, flaws=flaws)) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    print(result.output)
    assert result.exit_code == 1, result.output
    assert failed(result.output) == {"expiry: lapsed hold -> expired"}, result.output
    assert re.search(line, result.output), f"{line!r} not in:\n{result.output}"


@pytest.mark.slow
def test_a_server_that_does_not_say_how_many_are_available_passes() -> None:
    """``available`` is optional (given "when the POS tells"): the stock checks judge what
    holds win; only the flow listing's counts, which need it, are not made."""
    with serve(naive_app(naive_stock(), ttl=1.0, tells_available=False)) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    print(result.output)
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    for name in (
        "stock: an invoice and its retries sell once",
        "stock: a release and its retries give back once",
    ):
        outcome, reason = table.pop(name)
        assert outcome == "SKIP", result.output
        assert reason.strip().endswith(
            "not counted: POST /v1/holds of 10000 tickets answered 409 insufficient_quantity "
            "without available (optional)"
        ), result.output
    assert {r for r, _ in table.values()} == {"PASS"}, result.output


RATE_LIMITED = (
    r"POST /v1/holds answered 429 rate_limited with Retry-After: 1: the API key's rate limit "
    r"was hit, so the run stopped"
)


@pytest.mark.slow
def test_a_rate_limited_run_says_so_and_gives_back_what_it_held() -> None:
    """The key's limit is spent in the race (the 7th hold of the small listing on), for 1.5 s:
    the race fails with the line that says so (no oversell is blamed), the checks after it are
    not run, and the winners' cleanup releases, refused 429 at first, are retried after
    Retry-After until the tickets are back."""
    stock = naive_stock()
    with serve(naive_app(stock, rate_limit=(7, 1.5))) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    print(result.output)
    assert result.exit_code == 1, result.output
    table = rows(result.output)
    race, reason = table["concurrent holds: no oversell"]
    assert race == "FAIL" and re.search(RATE_LIMITED, reason), result.output
    assert "oversold" not in reason and "cleanup" not in reason, result.output
    after = list(table)[list(table).index("concurrent holds: no oversell") + 1 :]
    assert after and all(table[name][0] == "SKIP" for name in after), result.output
    assert all("the API key's rate limit was hit" in table[name][1] for name in after)
    assert failed(result.output) == {"concurrent holds: no oversell"}, result.output
    assert stock["naive:small"] == 3


@pytest.mark.slow
def test_the_demo_servers_rate_limit_stops_a_run_that_gives_back_what_it_held(
    monkeypatch,
) -> None:
    """The README's demo server allows a key 600 calls a minute: runs of the README's check
    one after another spend it within a few. The run that hits it fails with the line that says
    so, and leaves demo-2 as it found it: its cleanup releases wait out Retry-After."""
    from tevo_hold.checker import run_checks

    for name in [k for k in os.environ if k.startswith("TEVO_HOLD_")]:
        monkeypatch.delenv(name)
    app = create_app()
    service = app.extensions["tevo_hold"].service
    listings = [Listing("demo-1", 10), Listing("demo-2", 4)]
    try:
        with serve(app) as url:
            for _ in range(12):
                report = run_checks(url, "demo-key", listings=listings)
                if not report.ok:
                    break
        print(report.format())
        [limited] = report.failed
        assert re.search(
            r"answered 429 rate_limited with Retry-After: \d+: the API key's rate limit was hit",
            limited.reason,
        ), report.format()
        assert "cleanup" not in limited.reason, report.format()
        stock = service.adapter.stock("demo-2")
    finally:
        service.close()
    assert stock.held == 0 and stock.available == 4, stock


class _LimitOnce:
    """WSGI middleware: answers the first request that ``hit(path, body)`` picks 429
    rate_limited (Retry-After: 1), as a key's limit spent at that moment would; the rest pass."""

    def __init__(self, app: Any, hit: Callable[[str, dict[str, Any]], bool]) -> None:
        self.app, self.hit, self.done = app, hit, False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not self.done and environ["REQUEST_METHOD"] == "POST":
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(raw)
            try:
                body = json.loads(raw)
            except ValueError:  # a bad body the app is to refuse itself
                body = None
            if isinstance(body, dict) and self.hit(environ["PATH_INFO"], body):
                self.done = True
                problem = json.dumps({"status": 429, "code": "rate_limited", "title": "limit"})
                start_response("429 TOO MANY REQUESTS", [
                    ("Content-Type", PROBLEM), ("Retry-After", "1"),
                    ("Content-Length", str(len(problem))),
                ])  # fmt: skip
                return [problem.encode()]
        return self.app(environ, start_response)


@pytest.mark.parametrize(
    ("hit", "check_name", "sold"),
    [
        (lambda path, body: body.get("quantity") == 10_000, "invoice -> 201 invoiced", 0),
        (
            lambda path, body: path == "/v1/releases" and body["global_id"].endswith("-released"),
            "hold, release -> 200 released",
            1,  # the flow's sale came before
        ),
    ],
    ids=["before-the-invoice", "at-the-release"],
)
def test_a_run_stopped_by_a_429_gives_back_the_flow_holds(
    hit: Any, check_name: str, sold: int
) -> None:
    """A 429 to the ticket count before the invoice left the flow's hold held; one to the
    release of "hold, release" left its two tickets held: the flow listing short until they
    lapsed (15 minutes by default)."""
    stock = naive_stock()
    app = naive_app(stock)
    app.wsgi_app = _LimitOnce(app.wsgi_app, hit)  # type: ignore[method-assign]
    with serve(app) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    print(result.output)
    assert result.exit_code == 1, result.output
    assert failed(result.output) == {check_name}, result.output
    assert stock == {**naive_stock(), "naive:flows": 10 - sold}, "the flow listing was left short"


@pytest.mark.parametrize(("header", "wait"), [("0", 0.2), ("0.05", 0.2), ("3", 3.0), ("x", 1.0)])
def test_a_retry_waits_what_retry_after_says_but_never_nothing(header: str, wait: float) -> None:
    """A server answering 429 with Retry-After: 0 had each cleanup release retried in a tight
    loop, for up to --timeout."""
    answer = checker._Answer(
        "POST", "/v1/releases", "", 429, PROBLEM, {"Retry-After": header}, {}, None, 0.0, 0.0
    )
    assert checker._retry_after(answer) == wait


@pytest.mark.slow
def test_a_cleanup_release_that_stays_refused_is_reported() -> None:
    """The limit stays spent past the checker's timeout: the winners' tickets cannot be given
    back, and the line says so."""
    stock = naive_stock()
    with serve(naive_app(stock, rate_limit=(7, 60.0))) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12", "--timeout", "1.5")
    print(result.output)
    assert result.exit_code == 1, result.output
    race, reason = rows(result.output)["concurrent holds: no oversell"]
    assert race == "FAIL" and re.search(RATE_LIMITED, reason), result.output
    assert re.search(
        r"; 3 cleanup releases failed, so what those holds took stays taken until it lapses: "
        r"POST /v1/releases answered 429 rate_limited with Retry-After: 1 \(retried for 1.5 s\)",
        reason,
    ), result.output
    assert stock["naive:small"] == 0


@pytest.mark.slow
def test_a_server_whose_lapsed_holds_keep_their_tickets_fails() -> None:
    """It lapses its holds on time (status expired) but never gives their tickets back; the
    check waits for them (a POS's worker may take a moment) only so long."""
    with serve(naive_app(naive_stock(), ttl=0.5, flaws=Flaws(lapse_leaks=True))) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12", "--max-expiry-wait", "1")
    assert result.exit_code == 1, result.output
    assert failed(result.output) == {"expiry: lapsed hold -> expired"}, result.output
    assert re.search(
        r"POST /v1/holds of all 3 tickets after the hold of them all lapsed answered 409 "
        r"insufficient_quantity \(available 0\): tickets were not given back \(for 1 s\)",
        result.output,
    ), result.output  # "for 1 s": it waited --max-expiry-wait less the TTL (at least 1 s), not
    # the default's 4.5 s (the whole run was timed instead, < 3 s, which a loaded machine broke)


@pytest.mark.slow
def test_a_race_longer_than_the_ttl_is_no_oversell() -> None:
    """Holds of the small listing take 60 ms each, one at a time: the race of 12 takes about
    0.7 s, and the first winners' holds lapse after 0.5 s, so the last holds win their tickets
    again. Only the holds made before the first winner's lapsed are counted."""
    app = naive_app(naive_stock(), ttl=0.5, slow={"naive:small": 0.06})
    with serve(app) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    assert result.exit_code == 0, result.output
    race, reason = rows(result.output)["concurrent holds: no oversell"]
    assert race == "PASS", result.output
    assert re.fullmatch(
        r"\s+\S+\s+\d+ later holds won tickets of lapsed ones \(holds live 0\.5 s\): "
        r"not counted",
        reason,
    ), result.output


@pytest.mark.slow
def test_a_race_too_long_to_judge_is_not_run_and_the_stock_checks_still_are() -> None:
    """Holds of the small listing take 30 ms each, one at a time, and live 50 ms: the first
    winner's lapses before the third is made, so the race cannot tell an oversell (SKIP); the
    stock is still known, so the checks after it run."""
    app = naive_app(naive_stock(), ttl=0.05, slow={"naive:small": 0.03})
    with serve(app) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    race, reason = table.pop("concurrent holds: no oversell")
    assert race == "SKIP", result.output
    assert reason.endswith(
        "not judged: holds live 0.05 s, and the first winner's lapsed before 3 holds were made"
    )
    assert {r for r, _ in table.values()} == {"PASS"}, result.output


def test_a_key_the_server_refuses_is_named_as_the_likely_mistake() -> None:
    """Run with a key the server does not accept, every check that needs it fails; each line
    says the server refused the key given, and where the checker took it from."""
    with serve(naive_app(naive_stock())) as url:
        result = check(url, *NAIVE_LISTINGS, env={"TEVO_HOLD_CHECK_API_KEY": "not-the-key"})
    print(result.output)
    assert result.exit_code == 1, result.output
    hint = "(the server refused the API key given: check --api-key or TEVO_HOLD_CHECK_API_KEY)"
    table = rows(result.output)
    assert table["hold -> 201 held"][0] == "FAIL"
    assert table["hold -> 201 held"][1].endswith(hint), result.output
    # the checks that send no key, or a wrong one on purpose, are not told so
    assert hint not in table["healthz -> 200 without a key"][1]


def test_a_netrc_entry_for_the_host_does_not_replace_the_bearer_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """requests sends a ~/.netrc entry for the URL's host as Basic auth when the session has no
    auth of its own, in place of the checker's Bearer header: a correct server failed 'auth:
    Bearer key accepted', and the operator was told to check --api-key."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1\nlogin ops\npassword s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with serve(naive_app(naive_stock())) as url:
        result = check(url, *NAIVE_LISTINGS)
    assert result.exit_code == 0, result.output
    assert rows(result.output)["auth: Bearer key accepted"][0] == "PASS"


@pytest.mark.slow
def test_the_wrong_key_sent_does_not_contain_the_real_one() -> None:
    """A gateway logging refused credentials must not log the real key."""
    refused: list[str] = []
    with serve(naive_app(naive_stock(), refused_keys=refused)) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    assert result.exit_code == 0, result.output
    assert refused, "no wrong key was sent"
    assert not [key for key in refused if API_KEY in key]


def test_a_wrong_key_never_contains_the_real_one_however_short_or_long() -> None:
    from tevo_hold.checker import _wrong_key

    every = string.ascii_letters + string.digits
    for key in ("k", "a1", "-", API_KEY, every, every + "-" + every):
        for _ in range(20):
            wrong = _wrong_key(key)
            assert key not in wrong and len(wrong) >= 32


@pytest.mark.slow
def test_oversell_is_caught_whatever_the_number_of_winners() -> None:
    with serve(naive_app(naive_stock(), flaws=Flaws(oversell=True))) as url:
        result = check(url, *NAIVE_LISTINGS, "--concurrency", "12")
    match = re.search(r"oversold: (\d+) of 12", result.output)
    assert match and 3 < int(match[1]) <= 12, result.output


@pytest.mark.slow
def test_nothing_listening_fails_every_check_it_can_run() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = check(url, *NAIVE_LISTINGS, "--timeout", "2")
    assert result.exit_code == 1, result.output
    assert "GET /healthz without a key: no answer: ConnectionRefusedError" in result.output
    results = {r for r, _ in rows(result.output).values()}
    assert results == {"FAIL", "SKIP"}, result.output
    assert "not run: needs 'hold -> 201 held'" in result.output


# -- the command line, no server needed ------------------------------------------------------------


def test_listing_parses_remote_ids_with_colons() -> None:
    assert Listing.parse("a:b:7") == Listing("a:b", 7)
    for bad in ("nocolon", ":3", "x:y", "x:0"):
        with pytest.raises(ValueError, match=r"QUANTITY|REMOTE_ID"):
            Listing.parse(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either --prepare or --listing"),
        (("--prepare", "--listing", "a:9"), "give either --prepare or --listing"),
        (("--listing", "a:3"), "the flow listing needs at least 4 tickets"),
        (("--listing", "a:9", "--listing", "b:20"), "it needs fewer than the 20 concurrent"),
        (("--listing", "a:9", "--listing", "a:2"), "must be different listings"),
        (("--listing", "a", "--listing", "b:2"), "'a' is not REMOTE_ID:QUANTITY"),
        (("--listing", "a:9", "--listing", "b:2", "--listing", "c:2"), "at most twice"),
        (("--listing", "a:9", "--concurrency", "501"), "501 is not in the range 2<=x<=500"),
    ],
)
def test_usage_errors_exit_2_before_any_call(args: tuple[str, ...], message: str) -> None:
    # Port 9 (discard) on loopback: nothing answers; none of these may get as far as calling.
    result = check("http://127.0.0.1:9", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:8000", "must start with http:// or https:// and name a host"),
        ("http://", "must start with http:// or https:// and name a host"),
        ("http://127.0.0.1:99999", "cannot be read: Port out of range"),
        # every path went after the '?': a correct server failed half the checks
        ("http://127.0.0.1:9?", "has a query, a fragment or a blank"),
        ("http://127.0.0.1:9/#", "has a query, a fragment or a blank"),
        ("http://127.0.0.1:9/tevo ", "has a query, a fragment or a blank"),
        # the password is not shown, here or in CI logs
        ("http://u:s3cretpw@127.0.0.1:99999", "'http://u:***@127.0.0.1:99999' cannot be read"),
        # sent as Basic auth, in place of the Bearer key of the checks that send one
        ("http://u:s3cretpw@127.0.0.1:9", "'http://u:***@127.0.0.1:9' names a user"),
        ("http://u@127.0.0.1:9", "names a user (user:password@)"),
    ],
)
def test_a_url_the_checker_cannot_call_is_a_usage_error(url: str, message: str) -> None:
    """Not one failed check per call: one line naming the URL's mistake, before any call."""
    result = check(url, "--listing", "a:9")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "s3cretpw" not in result.output


def test_the_api_key_is_required() -> None:
    result = CliRunner().invoke(
        main,
        ["check", "http://127.0.0.1:9", "--listing", "a:9"],
        env={"TEVO_HOLD_CHECK_API_KEY": None},
    )
    assert result.exit_code == 2
    assert "--api-key" in result.output


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("s3cret-key-value\n", "it ends with a line break (read from a file? strip it)"),
        ("s3cret-key\nvalue", "it holds a line break"),
        (" s3cret-key-value", "it starts or ends with whitespace"),
        ("s3cret-key\x1bvalue", "it holds a control character"),
        ("s3cret-key-\u20acvalue", "it holds a character outside Latin-1"),
    ],
)
def test_a_key_that_cannot_be_a_header_is_one_line_that_never_shows_it(key: str, why: str) -> None:
    """requests would refuse it on every call, quoting it: one line instead, and no key."""
    result = check("http://127.0.0.1:9", *NAIVE_LISTINGS, env={"TEVO_HOLD_CHECK_API_KEY": key})
    assert result.exit_code == 2, result.output
    assert f"the API key cannot be sent as an HTTP header: {why}" in result.output
    assert "s3cret" not in result.output
    assert "CHECK" not in result.output  # no table: nothing was called


def test_the_key_is_redacted_from_any_text_shown() -> None:
    from tevo_hold.checker import Checker

    with Checker("http://127.0.0.1:9", "s3cret\\key", flow_listing=Listing("a", 9)) as checker:
        text = "InvalidHeader: 's3cret\\\\key' and s3cret\\key"
        assert checker._redact(text) == "InvalidHeader: '<the API key>' and <the API key>"


def test_prepare_refuses_the_embedded_default() -> None:
    result = check("http://127.0.0.1:9", "--prepare", "--redis-url", "memory://")
    assert result.exit_code == 1
    assert "needs the server's Redis" in result.output
