"""A tiny fake of the imaginary "Acme POS" whose REST API the vendor guide's ``AcmePosAdapter``
calls (docs/pos-vendors.md), so that the guide's adapter is run against the POS it describes.

- ``POST /listings/{remote_id}/holds``: holds ``quantity`` tickets under the ``Idempotency-Key``
  (a repeat holds nothing more); ``404`` no such listing, ``409 {"available": n}`` too few.
- ``DELETE /listings/{remote_id}/holds/{global_id}``: gives the hold back (``204``); ``404`` when
  it has no such hold (released before, lapsed, never made) or no such listing.
- ``POST /listings/{remote_id}/sales``: sells the hold of the key, or as many fresh tickets.

Faults, per call (``"hold"``, ``"release"``, ``"sale"``), each for the next call only:
``act_then_fail`` does the call then answers ``502`` (a gateway that gave up on a POS that did
act); ``fail`` answers ``502`` and does nothing; ``drop`` reads the request and closes the
connection without an answer, having done nothing.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .servers import http_server


@dataclass
class AcmeState:
    """What the fake POS holds and sold, the calls it got, and the faults it has in store."""

    stock: dict[str, int]
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (listing, quantity)
    sales: dict[str, Any] = field(default_factory=dict)  # key -> order
    calls: list[tuple[str, str]] = field(default_factory=list)  # (call, key)
    faults: dict[str, str] = field(default_factory=dict)  # call -> fault, for its next call
    lock: threading.Lock = field(default_factory=threading.Lock)

    def available(self, listing: str) -> int:
        held = sum(q for r, q in self.holds.values() if r == listing)
        return self.stock[listing] - held


def _handler(state: AcmeState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, call: str, act: Any) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            key = self.headers["Idempotency-Key"]
            with state.lock:
                state.calls.append((call, key))
                fault = state.faults.pop(call, None)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "fail":
                    self._answer(502)
                    return
                status, answer = act(key, body)
            self._answer(502 if fault == "act_then_fail" else status, answer)

        def do_POST(self) -> None:
            _, _, listing, what = self.path.split("/")
            listing = unquote(listing)
            if what == "holds":
                self._serve("hold", lambda key, body: hold(listing, key, body))
            else:
                self._serve("sale", lambda key, body: sell(listing, key, body))

        def do_DELETE(self) -> None:
            _, _, listing, _, key = self.path.split("/")
            self._serve("release", lambda _key, _body: release(unquote(listing), unquote(key)))

    def hold(listing: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        if listing not in state.stock:
            return 404, None
        if key in state.holds or key in state.sales:
            return 201, None
        if state.available(listing) < body["quantity"]:
            return 409, {"available": state.available(listing)}
        state.holds[key] = (listing, body["quantity"])
        return 201, None

    def release(listing: str, key: str) -> tuple[int, dict[str, Any] | None]:
        if listing not in state.stock or state.holds.pop(key, None) is None:
            return 404, {"error": "no such hold"}
        return 204, None

    def sell(listing: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        if listing not in state.stock:
            return 404, None
        if key not in state.sales:
            if key not in state.holds and state.available(listing) < body["quantity"]:
                return 409, {"available": state.available(listing)}
            state.holds.pop(key, None)
            state.stock[listing] -= body["quantity"]
            state.sales[key] = body["order"]
        return 201, None

    return Handler


@contextmanager
def acme_pos(stock: dict[str, int]) -> Iterator[tuple[str, AcmeState]]:
    """The fake Acme POS on a free loopback port: its base URL and its state."""
    state = AcmeState(stock=dict(stock))
    with http_server(_handler(state)) as url:
        yield url, state
