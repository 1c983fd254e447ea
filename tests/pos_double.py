"""A POS double for the HTTP adapter: a small Flask app on loopback that tests can steer.

It implements the adapter's default outbound contract (``POST {base}/holds``, ``/releases``,
``/invoices``) over a stock of tickets per listing, idempotent per ``global_id`` as the contract
asks (a repeated hold holds nothing more, a repeated invoice sells nothing more, a release after
an invoice gives nothing back), checks the API key header, and records every call.

Tests steer it per operation with a plan of steps, each for ``times`` calls (None: for good):
answer normally, be slow (sleep N s, then answer normally), hang until :meth:`PosDouble.unhang`
(then answer normally: a hold that hung still holds, as a real POS would once it gets to it),
answer a status (500 fails, 409/404/400 refuse) without doing anything (with ``body`` as its body if
given: the JSON of anything but a str, sent as it is), act and then answer a status all the same
(``acted``: a POS that failed after it acted, or a gateway that lost its answer), trickle its
answer (``trickle``: answer normally, or answer ``status`` without doing anything if it is not
200, sending the body a byte at a time over ``seconds``), or redirect (``redirect``: answer
``status``, a 3xx, with ``Location: location`` and do nothing, as an http-to-https front or a
single sign-on proxy does). Any ``GET`` answers ``200`` with a sign-in page, recorded as the
operation ``GET /path``: where a redirected call would land if it were followed.

Usage::

    with pos_double(stock={"R": 10}) as pos:
        pos.fail("invoice", times=2)
        ... HttpPosAdapter(pos.url, api_key=pos.api_key) ...
        assert pos.count("release", global_id="g1", ok=True) == 1
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["API_KEY", "Call", "PosDouble", "Step", "pos_double"]

API_KEY = "pos-secret"
OPERATIONS = ("hold", "release", "invoice")
#: The longest a hang lasts if a test never unhangs it (so no thread is left behind).
MAX_HANG = 30.0


@dataclass(frozen=True)
class Step:
    """What the double does for the next ``times`` calls of an operation (None: every call)."""

    kind: Literal["normal", "slow", "hang", "status", "acted", "trickle", "redirect"]
    seconds: float = 0.0
    status: int = 200
    times: int | None = None
    #: ``status`` only: the answer's body (a str as it is, anything else as JSON).
    body: Any = None
    #: ``redirect`` only: the ``Location`` header.
    location: str = ""


@dataclass
class Call:
    """One call the double received. ``status`` is None while it is still being answered."""

    operation: str
    global_id: str | None
    body: Any
    headers: dict[str, str]
    started: float  # time.time()
    #: The client's port: calls on one kept-alive connection share it.
    client_port: int | None = None
    finished: float | None = None
    status: int | None = None
    #: What the call did to the stock: "held", "released", "invoiced", or "" (nothing).
    effect: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _Hold:
    remote_id: str
    quantity: int
    state: Literal["held", "released", "invoiced"]
    tevo_order_id: Any = None


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class PosDouble:
    """The controller: the double's state, its plans, its call log, and its server."""

    stock: dict[str, int] = field(default_factory=dict)
    api_key: str = API_KEY
    auth_header: str = "X-API-Key"
    prefix: str = "/pos"
    paths: Mapping[str, str] = field(
        default_factory=lambda: {"hold": "/holds", "release": "/releases", "invoice": "/invoices"}
    )

    def __post_init__(self) -> None:
        self.holds: dict[str, _Hold] = {}
        self.sold: dict[str, int] = {}
        self.log: list[Call] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._plans: dict[str, list[Step]] = {op: [] for op in OPERATIONS}
        #: Every hang event handed out per operation (unhang sets them all).
        self._hangs: dict[str, list[threading.Event]] = {op: [] for op in OPERATIONS}
        self._closing = threading.Event()
        self._in_flight = 0
        self.server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app = self._make_app()

    # -- steering ------------------------------------------------------------------------------
    def plan(self, operation: str, *steps: Step) -> None:
        """Replace the plan of ``operation``: its steps in order, then normal answers."""
        assert operation in OPERATIONS, operation
        with self._lock:
            self._plans[operation] = list(steps)

    def normal(self, operation: str | None = None) -> None:
        """Answer ``operation`` (every operation if None) normally from now on; unhang it."""
        for op in [operation] if operation else OPERATIONS:
            self.plan(op)
            with self._lock:
                for event in self._hangs[op]:
                    event.set()

    def slow(self, operation: str, seconds: float, *, times: int | None = None) -> None:
        self.plan(operation, Step("slow", seconds=seconds, times=times))

    def hang(self, operation: str, *, times: int | None = None) -> None:
        """Hang ``operation`` until :meth:`unhang`; then the hung calls go on normally."""
        self.plan(operation, Step("hang", times=times))

    def unhang(self, operation: str | None = None) -> None:
        """Let the hung calls of ``operation`` (every one if None) go on; answer normally."""
        self.normal(operation)

    def fail(self, operation: str, status: int = 500, *, times: int | None = None) -> None:
        """Answer ``status`` (a failure, 500 by default) without doing anything."""
        self.plan(operation, Step("status", status=status, times=times))

    def refuse(self, operation: str, status: int, *, times: int | None = None) -> None:
        """Answer ``status`` (409, 404, 400, ...) without doing anything."""
        self.fail(operation, status, times=times)

    # -- reading -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.server is not None, "the double is not serving"
        return f"http://127.0.0.1:{self.server.server_port}{self.prefix}"

    def calls(
        self,
        operation: str | None = None,
        *,
        global_id: str | None = None,
        ok: bool | None = None,
        effect: str | None = None,
    ) -> list[Call]:
        """The calls received so far (in order), filtered."""
        with self._lock:
            return self._matching(operation, global_id=global_id, ok=ok, effect=effect)

    def count(self, operation: str | None = None, **filters: Any) -> int:
        return len(self.calls(operation, **filters))

    def available(self, remote_id: str) -> int:
        with self._lock:
            return self.stock[remote_id]

    def state(self, global_id: str) -> str | None:
        """The POS's state of ``global_id``: held, released, invoiced, or None (never seen)."""
        with self._lock:
            hold = self.holds.get(global_id)
            return hold.state if hold else None

    def wait_for(
        self,
        operation: str | None = None,
        *,
        count: int = 1,
        timeout: float = 10.0,
        finished: bool = False,
        **filters: Any,
    ) -> list[Call]:
        """Wait until at least ``count`` calls match (and, with ``finished``, were answered)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [
                    c
                    for c in self._matching(operation, **filters)
                    if not finished or c.status is not None
                ]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the POS double saw {len(found)} of {count} {operation or ''} calls "
                        f"matching {filters} in {timeout} s; log: {self.log!r}"
                    )
                self._changed.wait(left)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no call is being answered (hung or slow calls included)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self._in_flight} POS calls still in flight")
                self._changed.wait(left)

    def _matching(
        self,
        operation: str | None,
        *,
        global_id: str | None = None,
        ok: bool | None = None,
        effect: str | None = None,
    ) -> list[Call]:
        return [
            c
            for c in self.log
            if (operation is None or c.operation == operation)
            and (global_id is None or c.global_id == global_id)
            and (ok is None or c.ok == ok)
            and (effect is None or c.effect == effect)
        ]

    # -- serving -------------------------------------------------------------------------------
    def start(self) -> None:
        self.server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving: end every hang and sleep, let calls in flight finish, close the port."""
        self._closing.set()
        self.normal()
        if self.server is not None:
            self.server.shutdown()
            with contextlib.suppress(AssertionError):
                self.wait_idle(timeout=5.0)
            self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # -- the app -------------------------------------------------------------------------------
    def _make_app(self) -> Flask:
        app = Flask("pos_double")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        @app.post("/<path:path>")
        def call(path: str) -> Response:
            return self._handle("/" + path)

        @app.get("/<path:path>")
        def page(path: str) -> Response:
            # Where a followed redirect lands: a page that answers 200 whatever was asked.
            record = Call(f"GET /{path}", None, None, dict(request.headers), time.time())
            record.status, record.finished = 200, time.time()
            with self._changed:
                self.log.append(record)
                self._changed.notify_all()
            return self.app.response_class("<html>Please sign in</html>", 200, mimetype="text/html")

        return app

    def _next_step(self, operation: str) -> tuple[Step, threading.Event]:
        with self._lock:
            plan = self._plans[operation]
            hang = threading.Event()
            if not plan:
                return Step("normal"), hang
            step = plan[0]
            if step.kind == "hang":
                if self._closing.is_set():
                    hang.set()
                self._hangs[operation].append(hang)
            if step.times is not None:
                remaining = step.times - 1
                if remaining <= 0:
                    plan.pop(0)
                else:
                    plan[0] = dataclasses.replace(step, times=remaining)
            return step, hang

    def _handle(self, path: str) -> Response:
        operation = next(
            (op for op, p in self.paths.items() if self.prefix + p.rstrip("/") == path.rstrip("/")),
            None,
        )
        body = request.get_json(silent=True)
        gid = body.get("global_id") if isinstance(body, dict) else None
        record = Call(
            operation or path,
            gid,
            body,
            dict(request.headers),
            time.time(),
            client_port=request.environ.get("REMOTE_PORT"),
        )
        with self._changed:
            self.log.append(record)
            self._in_flight += 1
            self._changed.notify_all()
        try:
            status, answer = self._answer(operation, body)
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()
        with self._changed:
            record.status, record.effect = status, answer.pop("_effect", "")
            record.finished = time.time()
            self._changed.notify_all()
        trickle = answer.pop("_trickle", None)
        location = answer.pop("_location", None)
        raw = answer.pop("_body", None)
        payload = json.dumps(answer).encode() if raw is None else raw
        if location is not None:
            response = self.app.response_class(b"", status)
            response.headers["Location"] = location
            return response
        if trickle is None:
            return self.app.response_class(payload, status, mimetype="application/json")
        return self._trickled(payload, status, trickle)

    def _trickled(self, payload: bytes, status: int, seconds: float) -> Response:
        """An answer whose status line comes at once and its body (``Content-Length`` given) a
        byte at a time over ``seconds``: each byte in time for any read timeout, the whole late."""
        pause = seconds / len(payload)

        def drip() -> Iterator[bytes]:
            for at in range(len(payload)):
                yield payload[at : at + 1]
                if self._closing.wait(pause):
                    return

        response = self.app.response_class(drip(), status, mimetype="application/json")
        response.headers["Content-Length"] = str(len(payload))
        return response

    def _answer(self, operation: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        if operation is None:
            return 404, {"error": "no such route"}
        if request.headers.get(self.auth_header) != self.api_key:
            return 401, {"error": "bad API key"}
        step, hang = self._next_step(operation)
        if step.kind == "slow":
            self._closing.wait(step.seconds)
        elif step.kind == "hang":
            hang.wait(MAX_HANG)
        elif step.kind == "status":
            if step.body is not None:
                raw = step.body if isinstance(step.body, str) else json.dumps(step.body)
                return step.status, {"_body": raw.encode()}
            return step.status, {"error": f"told to answer {step.status}"}
        elif step.kind == "redirect":
            return step.status, {"_location": step.location}
        elif step.kind == "acted":
            effect = self._act(operation, body)[1].get("_effect", "")
            return step.status, {"error": f"told to answer {step.status}", "_effect": effect}
        elif step.kind == "trickle" and step.status != 200:
            return step.status, {"error": f"told to answer {step.status}", "_trickle": step.seconds}
        status, answer = self._act(operation, body)
        if step.kind == "trickle":
            answer["_trickle"] = step.seconds
        return status, answer

    def _act(self, operation: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Do ``operation`` as the contract says; its status and answer."""
        if not isinstance(body, dict):
            return 400, {"error": "expected a JSON object"}
        try:
            gid, rid, qty = str(body["global_id"]), str(body["remote_id"]), int(body["quantity"])
        except (KeyError, TypeError, ValueError):
            return 400, {"error": "global_id, remote_id and quantity are required"}
        with self._changed:
            if operation == "hold":
                return self._hold(gid, rid, qty)
            if operation == "release":
                return self._release(gid, rid)
            return self._invoice(gid, rid, qty, body.get("tevo_order_id"))

    # The three operations, under the lock.
    def _hold(self, gid: str, rid: str, qty: int) -> tuple[int, dict[str, Any]]:
        if rid not in self.stock:
            return 404, {"error": "no such listing"}
        hold = self.holds.get(gid)
        if hold is not None and hold.state in ("held", "invoiced"):
            return 200, {"global_id": gid, "status": hold.state}  # a repeat holds nothing more
        if self.stock[rid] < qty:
            return 409, {"error": "not enough tickets", "available": self.stock[rid]}
        self.stock[rid] -= qty
        self.holds[gid] = _Hold(rid, qty, "held")
        return 200, {"global_id": gid, "status": "held", "_effect": "held"}

    def _release(self, gid: str, rid: str) -> tuple[int, dict[str, Any]]:
        hold = self.holds.get(gid)
        if hold is None:
            if rid not in self.stock:
                return 404, {"error": "no such listing"}
            return 200, {"global_id": gid, "status": "unknown"}  # nothing to give back
        if hold.state != "held":
            return 200, {"global_id": gid, "status": hold.state}  # never undoes a sale
        self.stock[hold.remote_id] += hold.quantity
        hold.state = "released"
        return 200, {"global_id": gid, "status": "released", "_effect": "released"}

    def _invoice(self, gid: str, rid: str, qty: int, order: Any) -> tuple[int, dict[str, Any]]:
        hold = self.holds.get(gid)
        if hold is not None and hold.state == "invoiced":
            if hold.tevo_order_id != order:
                return 409, {"error": "invoiced under another order"}
            return 200, {"global_id": gid, "status": "invoiced"}  # sells nothing more
        if hold is None or hold.state == "released":
            # the hold lapsed or never reached us: take the tickets again if they are there
            if rid not in self.stock:
                return 404, {"error": "no such listing"}
            if self.stock[rid] < qty:
                return 409, {"error": "not enough tickets", "available": self.stock[rid]}
            self.stock[rid] -= qty
            hold = self.holds[gid] = _Hold(rid, qty, "held")
        hold.state, hold.tevo_order_id = "invoiced", order
        self.sold[hold.remote_id] = self.sold.get(hold.remote_id, 0) + hold.quantity
        return 200, {"global_id": gid, "status": "invoiced", "_effect": "invoiced"}


@contextlib.contextmanager
def pos_double(stock: Mapping[str, int] | None = None, **options: Any) -> Iterator[PosDouble]:
    """A running POS double with ``stock`` (remote_id → tickets); yields its controller."""
    pos = PosDouble(stock=dict(stock or {}), **options)
    pos.start()
    try:
        yield pos
    finally:
        pos.close()
