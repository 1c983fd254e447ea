"""HttpPosAdapter against a real HTTP POS double on loopback (tests/pos_double.py).

The outbound contract: POST {base}/holds {"remote_id", "quantity", "global_id"}, POST
{base}/releases {"global_id", "remote_id", "quantity"}, POST {base}/invoices {"global_id",
"tevo_order_id", "remote_id", "quantity"}; any 2xx is success, 404 no such listing, 409 not
enough tickets; the key in a configurable header; retries only where safe, within a budget.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import requests

from tevo_hold import (
    HoldService,
    HoldStatus,
    KeySpace,
    Ledger,
    PosAdapter,
    Settings,
    build_service,
    create_app,
    errors,
)
from tevo_hold.adapters.http import HttpPosAdapter, _Watchdog
from tevo_hold.web import EXTENSION_KEY
from tevo_hold.worker import Worker

from .pos_double import PosDouble, Step, pos_double
from .recording_pos import RecordingPos
from .servers import free_port, http_server, make_certificates

pytestmark = pytest.mark.slow

EXPIRES = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
#: The contract's bound on how much later than its budget a call may answer (not a speed goal).
SLACK = 0.5


@contextmanager
def kept_alive_pos(
    tls: ssl.SSLContext | None = None,
) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """A POS on loopback that answers every POST ``200 {}`` on kept-alive connections (the POS
    double closes each one); yields its base URL and each call's (path, client port)."""
    calls: list[tuple[str, int]] = []

    class KeptAlive(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append((self.path, self.client_address[1]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(KeptAlive, tls=tls) as url:
        yield url, calls


@pytest.fixture
def pos() -> Iterator[PosDouble]:
    with pos_double({"R": 10, "SMALL": 2}) as double:
        yield double


@pytest.fixture
def make_adapter(pos: PosDouble) -> Iterator[Any]:
    made: list[HttpPosAdapter] = []

    def make(url: str | None = None, **options: Any) -> HttpPosAdapter:
        options.setdefault("api_key", pos.api_key)
        adapter = HttpPosAdapter(url or pos.url, **options)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


@pytest.fixture
def adapter(make_adapter: Any) -> HttpPosAdapter:
    return make_adapter(timeout=1.0, budget=2.0)


def hold(adapter: PosAdapter, gid: str = "g1", rid: str = "R", qty: int = 2) -> None:
    adapter.hold(global_id=gid, remote_id=rid, quantity=qty, expires_at=EXPIRES)


def release(adapter: PosAdapter, gid: str = "g1", rid: str = "R", qty: int = 2) -> None:
    adapter.release(global_id=gid, remote_id=rid, quantity=qty)


def invoice(
    adapter: PosAdapter, gid: str = "g1", rid: str = "R", qty: int = 2, order: Any = 4711
) -> None:
    adapter.invoice(global_id=gid, remote_id=rid, quantity=qty, tevo_order_id=order)


# -- the contract's bodies, paths and header ------------------------------------------------------


def test_hold_posts_the_documented_body_with_the_key(pos, adapter):
    hold(adapter)
    [call] = pos.calls()
    assert call.operation == "hold" and call.status == 200
    assert call.headers["X-Api-Key"] == pos.api_key
    assert call.headers["Content-Type"] == "application/json"
    body = dict(call.body)
    # the contract's three fields, exactly; the adapter adds the deadline (documented in http.py)
    assert body.pop("expires_at") == "2030-01-01T12:00:00Z"
    assert body == {"remote_id": "R", "quantity": 2, "global_id": "g1"}
    assert pos.available("R") == 8


def test_release_posts_the_documented_body(pos, adapter):
    hold(adapter)
    release(adapter)
    call = pos.calls("release")[0]
    assert call.body == {"global_id": "g1", "remote_id": "R", "quantity": 2}
    assert call.headers["X-Api-Key"] == pos.api_key
    assert call.effect == "released" and pos.available("R") == 10


def test_invoice_posts_the_documented_body(pos, adapter):
    hold(adapter)
    invoice(adapter, order="TE-1")
    call = pos.calls("invoice")[0]
    assert call.body == {
        "global_id": "g1",
        "tevo_order_id": "TE-1",
        "remote_id": "R",
        "quantity": 2,
    }
    assert call.headers["X-Api-Key"] == pos.api_key
    assert call.effect == "invoiced" and pos.sold == {"R": 2} and pos.available("R") == 8


def test_the_global_id_goes_on_every_call(pos, adapter):
    hold(adapter, "gA")
    invoice(adapter, "gA")
    hold(adapter, "gB")
    release(adapter, "gB")
    assert [(c.operation, c.global_id) for c in pos.calls()] == [
        ("hold", "gA"),
        ("invoice", "gA"),
        ("hold", "gB"),
        ("release", "gB"),
    ]
    assert all(c.body["global_id"] == c.global_id for c in pos.calls())


def test_the_calls_go_to_the_base_url_path(pos, adapter):
    # the double serves under /pos: {base}/holds is /pos/holds, a trailing slash changes nothing
    slash = HttpPosAdapter(pos.url + "/", api_key=pos.api_key)
    try:
        hold(slash)
    finally:
        slash.close()
    assert pos.calls()[0].operation == "hold"


def test_one_session_and_a_timeout_on_every_call(pos, make_adapter):
    seen: list[dict[str, Any]] = []

    class Recording(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            seen.append({"method": method, "url": url, **kwargs})
            return super().request(method, url, *args, **kwargs)

    session = Recording()
    adapter = make_adapter(session=session, timeout=1.5, budget=2.5)
    assert adapter.session is session
    hold(adapter)
    invoice(adapter)
    release(adapter, "g2")
    assert [s["url"] for s in seen] == [
        pos.url + "/holds",
        pos.url + "/invoices",
        pos.url + "/releases",
    ]
    for call in seen:
        assert call["method"] == "POST" and call["stream"]  # the body is read against the deadline
        assert 0 < call["timeout"].total <= 1.5


def test_a_base_url_that_is_not_http_is_a_configuration_error():
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_URL"):
        HttpPosAdapter("ftp://127.0.0.1/pos")


def test_a_wrong_key_is_a_pos_error_and_not_retried(pos, make_adapter):
    adapter = make_adapter(api_key="wrong")
    with pytest.raises(errors.PosError):
        hold(adapter)
    assert [c.status for c in pos.calls()] == [401]
    assert pos.available("R") == 10


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202])
@pytest.mark.parametrize("operation", ["hold", "release", "invoice"])
def test_any_2xx_is_success(pos, adapter, operation, status):
    pos.refuse(operation, status)
    {"hold": hold, "release": release, "invoice": invoice}[operation](adapter)
    assert [c.status for c in pos.calls()] == [status]


def test_404_on_hold_is_listing_not_found(pos, adapter):
    with pytest.raises(errors.ListingNotFound):
        hold(adapter, rid="NOPE")
    assert [c.status for c in pos.calls()] == [404]  # not retried


def test_404_on_invoice_is_listing_not_found(pos, adapter):
    with pytest.raises(errors.ListingNotFound):
        invoice(adapter, rid="NOPE")
    assert pos.count() == 1


def test_release_of_an_unknown_listing_succeeds(pos, adapter):
    release(adapter, "never-held", rid="NOPE")
    assert [c.status for c in pos.calls()] == [404]
    pos.refuse("release", 404)
    release(adapter, "g2")  # whatever the POS's reason for its 404: nothing to give back


def test_409_is_insufficient_quantity_with_the_pos_count(pos, adapter):
    with pytest.raises(errors.InsufficientQuantity) as caught:
        hold(adapter, rid="SMALL", qty=3)
    assert caught.value.available == 2
    assert caught.value.status == 409 and caught.value.code == "insufficient_quantity"
    assert pos.count() == 1 and pos.available("SMALL") == 2


def test_409_without_a_count(pos, adapter):
    pos.refuse("invoice", 409)
    with pytest.raises(errors.InsufficientQuantity) as caught:
        invoice(adapter)
    assert caught.value.available is None
    assert pos.count() == 1


@pytest.mark.parametrize(
    ("body", "available"),
    [
        ({"available": 5}, 5),
        ({"available": 0}, 0),
        ({"available": -3}, 0),  # a POS's own bookkeeping gone below zero: none left
        ({"available": True}, None),
        ({"available": 2.5}, None),
        ({"available": "2"}, None),
        ({"available": None}, None),
        ({}, None),
        ([2], None),
        ("not json", None),
        ("[" * 60_000, None),  # deeper than json.loads can go
    ],
)
def test_409_passes_on_only_a_count_of_tickets(pos, adapter, body, available):
    """The count goes into the problem document TEvo gets, whose schema says a non-negative
    integer: a POS's negative count is 0, anything but an integer is left out."""
    pos.plan("hold", Step("status", status=409, body=body))
    with pytest.raises(errors.InsufficientQuantity) as caught:
        hold(adapter)
    assert caught.value.available == available and type(caught.value.available) is not bool
    assert caught.value.extra() == ({} if available is None else {"available": available})
    assert pos.count() == 1


@pytest.mark.parametrize("operation", ["hold", "release", "invoice"])
def test_400_is_a_pos_error_and_not_retried(pos, adapter, operation):
    pos.refuse(operation, 400)
    with pytest.raises(errors.PosError) as caught:
        {"hold": hold, "release": release, "invoice": invoice}[operation](adapter)
    assert caught.value.status == 502 and caught.value.code == "pos_error"
    assert pos.count() == 1


#: Where each operation goes: a redirect there would act, were a 307 or 308 followed.
PATHS = {"hold": "/pos/holds", "release": "/pos/releases", "invoice": "/pos/invoices"}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("operation", ["hold", "release", "invoice"])
def test_a_redirect_is_a_refusal_never_followed(pos, make_adapter, caplog, operation, status):
    """An http-to-https front, a single sign-on proxy, a moved path: followed, a 301, 302 or 303
    would turn the POST into a GET without its body, whose 200 (a login page) counted as success,
    and a 307 or 308 would send the call where nobody configured. A refusal, not retried, whose
    log names where it pointed (TEvo is told no address): a definite one, but for a 303 (See
    Other), which says the server acted and points to the outcome: unknown."""
    adapter = make_adapter(retries=2, budget=3.0)
    if operation != "hold":
        hold(adapter)  # something to release or invoice
    redirect = Step("redirect", status=status, location=PATHS[operation] + "?from=sso", times=1)
    pos.plan(operation, redirect)
    call = {"hold": hold, "release": release, "invoice": invoice}[operation]
    with (
        caplog.at_level(logging.WARNING, logger="tevo_hold"),
        pytest.raises(errors.PosError, match=f"redirect.*{status}") as caught,
    ):
        call(adapter)
    assert caught.value.outcome_unknown is (status == 303)
    assert (caught.value.status, caught.value.code) == (502, "pos_error")
    assert [(c.operation, c.status) for c in pos.calls()][-1:] == [(operation, status)]
    assert pos.count() == (1 if operation == "hold" else 2)  # no retry, nothing followed
    assert pos.state("g1") == (None if operation == "hold" else "held")
    assert "127.0.0.1" not in caught.value.detail
    warned = [r.getMessage() for r in caplog.records if "redirect" in r.getMessage()]
    assert len(warned) == 1 and "TEVO_HOLD_POS_URL" in warned[0]
    assert f"{pos.url.removesuffix('/pos')}{PATHS[operation]}?from=sso" in warned[0]


def test_a_redirect_to_a_login_page_holds_and_sells_nothing(pos, service):
    """The usual single sign-on front with an expired key: every call is sent to its login
    page. TEvo must hear that nothing was held, and no sale may be recorded as made."""
    pos.plan("hold", Step("redirect", status=302, location="/login?next=/pos/holds", times=1))
    with pytest.raises(errors.PosError):
        service.hold(remote_id="R", quantity=2, global_id="g1")
    assert pos.state("g1") is None and pos.count("GET /login") == 0
    with pytest.raises(errors.HoldNotFound):  # the refused hold is not kept
        service.get(global_id="g1")
    service.hold(remote_id="R", quantity=2, global_id="g2")
    pos.plan("invoice", Step("redirect", status=302, location="/login?next=/pos/invoices"))
    with pytest.raises(errors.PosError):
        service.invoice(global_id="g2", tevo_order_id=7)
    assert pos.state("g2") == "held" and pos.sold == {}
    assert service.get(global_id="g2").status is not HoldStatus.INVOICED


def test_a_hold_answered_303_is_released_by_the_worker(pos, service):
    """A 303 (See Other) says the POS acted: the hold may be there, so it is released."""
    pos.plan("hold", Step("redirect", status=303, location="/pos/holds/g1", times=1))
    with pytest.raises(errors.PosError):
        service.hold(remote_id="R", quantity=2, global_id="g1")
    assert run_when_due(Worker(service)) == 1  # the compensation, a lease later
    assert [c.status for c in pos.calls("release", global_id="g1")] == [200]


@pytest.mark.parametrize("operation", ["hold", "invoice"])
def test_a_redirect_after_a_5xx_leaves_the_outcome_unknown(pos, make_adapter, operation):
    """The POS acts and its answer is lost to a 502; the retry meets a redirect (a proxy that
    now wants a login). The redirect says nothing of the first attempt: unknown."""
    adapter = make_adapter(retries=2, budget=3.0)
    if operation == "invoice":
        hold(adapter)
    redirect = Step("redirect", status=302, location="/login")
    pos.plan(operation, ACTED_THEN_502, redirect)
    with pytest.raises(errors.PosError) as caught:
        {"hold": hold, "invoice": invoice}[operation](adapter)
    assert caught.value.outcome_unknown
    assert [c.status for c in pos.calls(operation)][-2:] == [502, 302]
    assert pos.state("g1") == {"hold": "held", "invoice": "invoiced"}[operation]


def test_a_health_path_that_redirects_is_not_ready():
    """A health check sent to a login page (200) would call the POS up while every call is
    refused: a redirect is not followed, and is not ready."""

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(302)
                self.send_header("Location", "/login")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Redirecting) as url:
        adapter = HttpPosAdapter(url, health_path="/health", timeout=1.0)
        try:
            assert adapter.ready() is False
            adapter.health_path = "/login"
            assert adapter.ready() is True
        finally:
            adapter.close()


@pytest.mark.parametrize("operation", ["hold", "release", "invoice"])
def test_500_is_retried_and_then_succeeds(pos, make_adapter, operation):
    adapter = make_adapter(retries=2, budget=3.0)
    hold(adapter)  # something to release or invoice
    pos.fail(operation, 500, times=2)
    {"hold": hold, "release": release, "invoice": invoice}[operation](adapter)
    assert [c.status for c in pos.calls(operation)][-3:] == [500, 500, 200]
    # idempotent: the POS moved tickets once
    expected = {"hold": 8, "release": 10, "invoice": 8}[operation]
    assert pos.available("R") == expected


def test_always_500_is_a_pos_error_after_the_retries(pos, make_adapter):
    adapter = make_adapter(retries=2, budget=3.0)
    pos.fail("hold", 500)
    with pytest.raises(errors.PosError):
        hold(adapter)
    assert [c.status for c in pos.calls()] == [500, 500, 500]
    assert pos.available("R") == 10


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_leaves_the_outcome_unknown(pos, make_adapter, status):
    """A POS may fail after it acted, and a gateway's 502 or 504 may hide that it did: the error
    says so, and the service compensates a hold instead of forgetting it."""
    adapter = make_adapter(retries=0)
    pos.fail("hold", status)
    with pytest.raises(errors.PosError) as caught:
        hold(adapter)
    assert caught.value.outcome_unknown
    assert (caught.value.status, caught.value.code) == (502, "pos_error")


def test_a_refusal_leaves_nothing_unknown(pos, make_adapter):
    adapter = make_adapter(retries=0)
    pos.refuse("hold", 400)
    with pytest.raises(errors.PosError) as caught:
        hold(adapter)
    assert not caught.value.outcome_unknown


def test_retries_zero_means_one_attempt(pos, make_adapter):
    adapter = make_adapter(retries=0)
    pos.fail("invoice", 503)
    with pytest.raises(errors.PosError):
        invoice(adapter)
    assert pos.count() == 1


def test_a_refused_connection_is_unavailable(make_adapter):
    adapter = make_adapter(f"http://127.0.0.1:{free_port()}/pos", timeout=1.0, budget=2.0)
    for call in (hold, release, invoice):
        started = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            call(adapter)
        assert caught.value.status == 503 and caught.value.code == "unavailable"
        assert time.monotonic() - started < 2.0 + SLACK


def test_a_refused_connection_is_unavailable_with_a_tight_budget(make_adapter):
    """Nothing was sent, so the outcome is known: 503 unavailable, never 504, within budget.

    Tried several times: the backoff between attempts is random.
    """
    budget = 0.3
    adapter = make_adapter(f"http://127.0.0.1:{free_port()}/pos", timeout=1.0, budget=budget)
    answers = []
    for _ in range(5):
        started = time.monotonic()
        try:
            release(adapter)
        except errors.TevoHoldError as exc:
            answers.append((type(exc).__name__, round(time.monotonic() - started, 2)))
    assert all(name == "Unavailable" for name, _ in answers), answers
    assert all(elapsed < budget + SLACK for _, elapsed in answers), answers


def test_an_unreachable_pos_is_named_in_the_log_never_in_the_error(make_adapter, caplog):
    """TEvo reads the error's detail: it names neither the POS's address nor its password;
    the log names the address, without the password."""
    port = free_port()
    url = f"http://posuser:s3cretpw@127.0.0.1:{port}/internal/tevo"
    adapter = make_adapter(url, retries=0, timeout=1.0, budget=2.0)
    with (
        caplog.at_level(logging.WARNING, logger="tevo_hold"),
        pytest.raises(errors.Unavailable) as caught,
    ):
        hold(adapter)
    assert caught.value.detail == "The POS is unreachable."
    assert f"http://posuser:***@127.0.0.1:{port}/internal/tevo/holds" in caplog.text
    assert "s3cretpw" not in caplog.text


def test_a_pos_whose_tls_certificate_is_refused_is_unavailable_not_unknown(
    make_adapter, tmp_path, caplog
):
    """A certificate the adapter does not trust (a wrong CA bundle, say) fails the handshake
    before a byte of the call is sent: nothing can have happened in the POS, so the call is
    Unavailable (a hold is refused cleanly), never PosTimeout, whose unknown outcome would have
    the worker send releases that fail the same way until the certificate is fixed."""
    files = make_certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    with kept_alive_pos(context) as (url, calls):
        adapter = make_adapter(url, retries=0)
        with (
            caplog.at_level(logging.WARNING, logger="tevo_hold"),
            pytest.raises(errors.Unavailable),
        ):
            hold(adapter)
    assert calls == []
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_a_pos_whose_ca_is_private_is_trusted_through_the_ca_file_setting(tmp_path, monkeypatch):
    """requests trusts certifi's bundle, not the system's: a POS whose certificate a private CA
    signed failed every call (503), SSL_CERT_FILE and update-ca-certificates being ignored.
    TEVO_HOLD_POS_CA_FILE names the CA's PEM file; it wins over REQUESTS_CA_BUNDLE, which
    requests would otherwise put in place of a session's own bundle."""
    files = make_certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    with kept_alive_pos(context) as (url, calls):
        settings = Settings.from_env(
            {
                "TEVO_HOLD_API_KEYS": "k",
                "TEVO_HOLD_ADAPTER": "http",
                "TEVO_HOLD_POS_URL": url,
                "TEVO_HOLD_POS_CA_FILE": str(files["ca"]),
            }
        )
        service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
        try:
            assert service.hold(remote_id="R", quantity=1, global_id="g1").hold.status == "held"
        finally:
            service.close()
    assert [path for path, _ in calls] == ["/holds"]


def test_the_deadline_watchdog_leaves_a_connection_whose_answer_came_whole() -> None:
    """urllib3 hands a connection back to the pool inside the read that ends its body: from
    then on it may be another call's. A watchdog whose deadline falls after that must leave it
    alone (it used to shut the socket down, cutting whatever call had taken it)."""
    with kept_alive_pos() as (url, calls), requests.Session() as session:
        response = session.post(f"{url}/first", json={}, stream=True)
        with _Watchdog(time.monotonic() + 60) as watchdog:
            watchdog.watch(response.raw.fileno())
            assert watchdog.attach(response)
            assert response.raw.read() == b"{}"  # whole: the connection is the pool's
            second = session.post(f"{url}/second", json={}, stream=True)  # takes it
            watchdog._shut()  # the deadline passes now
            assert not watchdog.fired
            assert second.raw.read() == b"{}"  # the other call's answer, uncut
    assert [path for path, _ in calls] == ["/first", "/second"]
    assert calls[0][1] == calls[1][1]  # on one connection


def test_the_api_answers_an_unreachable_pos_without_its_address_or_password():
    url = f"http://posuser:s3cretpw@127.0.0.1:{free_port()}/internal/tevo"
    config = {
        "TEVO_HOLD_API_KEYS": "k",
        "TEVO_HOLD_ADAPTER": "http",
        "TEVO_HOLD_POS_URL": url,
        "TEVO_HOLD_POS_RETRIES": "0",
    }
    app = create_app(config)
    try:
        body = {"remote_id": "R", "quantity": 1, "global_id": "g1"}
        answer = app.test_client().post("/v1/holds", json=body, headers={"X-API-Key": "k"})
    finally:
        app.extensions[EXTENSION_KEY].service.close()
    assert answer.status_code == 503
    assert answer.get_json()["detail"] == "The POS is unreachable."
    text = answer.get_data(as_text=True)
    assert "s3cretpw" not in text and "posuser" not in text and "127.0.0.1" not in text


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, errors.ListingNotFound),
        (409, errors.InsufficientQuantity),
        (400, errors.PosError),
        (500, errors.PosError),
    ],
)
def test_what_the_pos_answered_goes_to_the_log_not_to_tevo(
    pos, make_adapter, caplog, status, error
):
    """An error's detail reaches TEvo (and the audit trail TEvo reads); a POS's error page may
    show its internals, so its text goes to the seller's log only."""
    adapter = make_adapter(retries=0)
    pos.fail("hold", status)
    with caplog.at_level(logging.WARNING, logger="tevo_hold"), pytest.raises(error) as caught:
        hold(adapter)
    assert "told to answer" not in caught.value.detail and str(status) in caught.value.detail
    assert any("told to answer" in r.getMessage() for r in caplog.records)


def test_a_bad_pos_url_is_named_without_its_password():
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_URL") as caught:
        HttpPosAdapter("ftp://posuser:s3cretpw@pos.example/tevo")
    assert "s3cretpw" not in caught.value.detail
    assert "has the scheme 'ftp'" in caught.value.detail


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("posuser:s3cret@pos.internal/tevo", "is not a URL"),
        ("ftp://s3cret@pos.internal/tevo", "has the scheme 'ftp'"),
        ("tcp://pos.internal/tevo?key=s3cret", "has the scheme 'tcp'"),
    ],
)
def test_a_refused_base_url_is_named_by_its_scheme_never_with_its_password(url, named):
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_URL") as caught:
        HttpPosAdapter(url)
    assert named in str(caught.value) and "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("https://posuser:s3cretpw@pos.internal:99999/api", "its host and port cannot be read"),
        ("https://posuser:s3cretpw@pos.internal:0/api", "its host and port cannot be read"),
        ("https://posuser:s3cretpw@[::1/api", "an IPv6 address in brackets ([::1]:8080)"),
        ("https://posuser:s3cret/pw@pos.internal/api", "must be percent-encoded: %2F"),
        ("https://posuser:s3cretpw@:8080/api", "it names no host"),
        ("https://posuser:s3cretpw@pos internal/api", "holds a blank or a control character"),
        ("https://pos.internal/api?key=s3cretpw", "it has a query or a fragment"),
        ("https://pos.internal/api#s3cretpw", "it has a query or a fragment"),
        # empty, they read as none, but the calls' paths went after them: /api?/releases
        ("https://posuser:s3cretpw@pos.internal/api?", "it has a query or a fragment"),
        ("https://posuser:s3cretpw@pos.internal/api/#", "it has a query or a fragment"),
        # from an env file: /api%20/releases, /api%09/releases
        ("https://posuser:s3cretpw@pos.internal/api ", "holds a blank or a control character"),
        ("https://posuser:s3cretpw@pos.internal/api\t", "holds a blank or a control character"),
    ],
    ids=[
        "port",
        "port-0",
        "ipv6",
        "slash-in-password",
        "no-host",
        "space",
        "query",
        "fragment",
        "empty-query",
        "empty-fragment",
        "trailing-blank",
        "trailing-tab",
    ],
)
def test_a_base_url_requests_cannot_call_is_refused_at_start_without_its_password(url, named):
    """It was taken; then every call answered 500 internal_error (requests' InvalidURL, which
    no adapter may raise), and the log's traceback showed the URL with its password. A query
    had the calls' paths appended to it (?key=x/holds): calls to the wrong URL."""
    config = {"TEVO_HOLD_API_KEYS": "k", "TEVO_HOLD_ADAPTER": "http", "TEVO_HOLD_POS_URL": url}
    with pytest.raises(errors.ConfigurationError) as caught:
        create_app(config)
    message = str(caught.value)
    assert message.startswith("TEVO_HOLD_POS_URL: ") and named in message, message
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))


#: A create_app config with the http adapter; the POS is never called.
HTTP_CONFIG = {
    "TEVO_HOLD_ADAPTER": "http",
    "TEVO_HOLD_POS_URL": "http://127.0.0.1:9/api",
    "TEVO_HOLD_API_KEYS": "k" * 40,
}


@pytest.mark.parametrize(
    "key",
    [
        "s3cret-pos-key\r",
        "s3cret-pos-key\r\n",
        "s3cret\npos-key",
        " s3cret-pos-key",
        "s3cret\x00key",
        "s3cret-pos-key ",
        "s3cret-\u20ac-key",
    ],
    ids=["cr", "crlf", "lf", "leading-blank", "nul", "trailing-blank", "not-latin-1"],
)
def test_a_pos_key_that_cannot_be_sent_in_a_header_is_refused_at_start_unshown(key):
    """A key with a CR left over from an env file written on Windows started fine, and then
    every hold, release and invoice answered 502 (requests' InvalidHeader, each call). A blank
    at either end is sent, but HTTP strips it: the POS sees another key, and refuses every call.
    The start now stops, naming the setting and never showing the key."""
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_API_KEY") as caught:
        create_app({**HTTP_CONFIG, "TEVO_HOLD_POS_API_KEY": key})
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize("name", ["X API Key", "X-API-Key:", "X-API-Key\r", "", "Ключ"], ids=repr)
def test_an_auth_header_that_is_no_header_name_is_refused_at_start(name):
    """A header name is an HTTP token: one with a blank (which requests lets through, and the
    POS answers 400 to every call), a colon or a line break cannot carry the key."""
    config = {**HTTP_CONFIG, "TEVO_HOLD_POS_API_KEY": "s3cret", "TEVO_HOLD_POS_AUTH_HEADER": name}
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_AUTH_HEADER") as caught:
        HttpPosAdapter(config["TEVO_HOLD_POS_URL"], api_key="s3cret", auth_header=name)
    assert "s3cret" not in str(caught.value)
    if name:  # empty is unset, the default header
        with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_AUTH_HEADER"):
            create_app(config)


@pytest.mark.parametrize("header", ["Authorization", "authorization"])
def test_credentials_in_the_url_beside_a_key_in_authorization_are_refused_at_start(header):
    """requests sends a URL's user:password@ as Basic authorization, replacing the Authorization
    header that carried TEVO_HOLD_POS_API_KEY: the POS never saw the key, and refused every
    call. The start stops naming both settings, never showing the password or the key."""
    config = {
        **HTTP_CONFIG,
        "TEVO_HOLD_POS_URL": "https://posuser:s3cretpw@pos.example/api",
        "TEVO_HOLD_POS_API_KEY": "Bearer s3cret-key",
        "TEVO_HOLD_POS_AUTH_HEADER": header,
    }
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_URL") as caught:
        create_app(config)
    assert "TEVO_HOLD_POS_AUTH_HEADER" in str(caught.value)
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))
    # Either alone is fine, and so are both with the key in another header.
    for fine in [
        {"TEVO_HOLD_POS_API_KEY": ""},
        {"TEVO_HOLD_POS_URL": "https://pos.example/api"},
        {"TEVO_HOLD_POS_AUTH_HEADER": "X-API-Key"},
    ]:
        create_app({**config, **fine})


def test_a_key_with_inner_blanks_and_symbols_is_sent_as_it_is():
    """What a header can carry is left alone: a Bearer token, say."""
    with pos_double({"R": 10}, auth_header="Authorization", api_key="Bearer a.b-c_d~e+f/g=") as p:
        adapter = HttpPosAdapter(p.url, api_key=p.api_key, auth_header="Authorization")
        try:
            hold(adapter)
        finally:
            adapter.close()
        assert p.calls()[0].headers["Authorization"] == "Bearer a.b-c_d~e+f/g="


@pytest.mark.parametrize(
    "setting",
    [
        "TEVO_HOLD_POS_HOLD_PATH",
        "TEVO_HOLD_POS_RELEASE_PATH",
        "TEVO_HOLD_POS_INVOICE_PATH",
        "TEVO_HOLD_POS_HEALTH_PATH",
    ],
)
def test_a_path_without_its_leading_slash_is_refused_naming_the_setting(setting):
    """TEVO_HOLD_POS_RELEASE_PATH=releases was posted to {base}releases (/apireleases), where
    a POS answers 404, which a release counts as done: TEvo was told "released" while the POS
    kept the tickets off sale."""
    settings = Settings.from_env(
        {
            "TEVO_HOLD_API_KEYS": "k",
            "TEVO_HOLD_ADAPTER": "http",
            "TEVO_HOLD_POS_URL": "http://127.0.0.1:1/api",
            setting: "releases",
        }
    )
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        with pytest.raises(errors.ConfigurationError) as caught:
            build_service(settings, client=client)
    finally:
        client.close()
    assert str(caught.value) == (
        f"{setting}='releases': a path must start with '/' (it is appended to "
        "TEVO_HOLD_POS_URL): write '/releases'"
    )


def test_a_call_requests_refuses_to_make_is_a_pos_error_logged_without_secrets(
    make_adapter, caplog
):
    """A key read from a file with its line break: requests refuses the header on every call
    (InvalidHeader, whose message shows the key), which answered 500 internal_error with the
    key in the log's traceback. Nothing was sent: a refusal, logged without the URL's password
    or the key. (Such a key is refused when the adapter is made; a session given to it may
    still carry one.)"""
    port = free_port()
    url = f"http://posuser:s3cretpw@127.0.0.1:{port}/api"
    adapter = make_adapter(url, retries=0)
    adapter.session.headers["X-API-Key"] = "s3cret-key\n"
    with (
        caplog.at_level(logging.WARNING, logger="tevo_hold"),
        pytest.raises(errors.PosError) as caught,
    ):
        hold(adapter)
    assert caught.value.detail == "The hold call to the POS could not be made: nothing was done."
    assert not caught.value.outcome_unknown
    assert (
        f"the hold call to the POS at http://posuser:***@127.0.0.1:{port}/api/holds could not "
        "be made: InvalidHeader"
    ) in caplog.text
    assert "s3cret" not in caplog.text
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("timeout", "budget"),
    [(2.0, 1.0), (0.3, 1.0)],
    ids=["attempt-longer-than-budget", "several-attempts"],
)
@pytest.mark.parametrize("operation", ["hold", "release", "invoice"])
def test_a_hanging_pos_is_a_timeout_within_the_budget(
    pos, make_adapter, operation, timeout, budget
):
    adapter = make_adapter(timeout=timeout, budget=budget)
    pos.hang(operation)
    started = time.monotonic()
    with pytest.raises(errors.PosTimeout) as caught:
        {"hold": hold, "release": release, "invoice": invoice}[operation](adapter)
    elapsed = time.monotonic() - started
    assert caught.value.status == 504 and caught.value.code == "pos_timeout"
    assert elapsed < budget + SLACK, elapsed
    pos.unhang()
    pos.wait_idle()


#: How long a trickled body takes in all (a byte at a time, each in time for a read timeout).
TRICKLE = 8.0
#: How much later than its budget a call with a trickled body may end (not a speed goal).
TRICKLE_SLACK = 1.5


@pytest.mark.parametrize("operation", ["hold", "release", "invoice"])
def test_a_success_whose_body_trickles_ends_within_the_budget(pos, make_adapter, operation):
    """The budget bounds the whole call, body included. A timeout per socket read never cuts off
    a POS (or a proxy) that sends its answer a byte at a time, and the worker's lease assumes a
    call ends within the budget. The status line already said what the POS did: the body is read
    until the deadline, then the connection is dropped, and a 2xx is a success."""
    adapter = make_adapter(timeout=1.0, budget=2.0)
    if operation != "hold":
        hold(adapter)
    pos.plan(operation, Step("trickle", seconds=TRICKLE))
    started = time.monotonic()
    {"hold": hold, "release": release, "invoice": invoice}[operation](adapter)
    assert time.monotonic() - started < 2.0 + TRICKLE_SLACK
    assert (
        pos.state("g1") == {"hold": "held", "release": "released", "invoice": "invoiced"}[operation]
    )


def test_a_refusal_whose_body_trickles_ends_within_the_budget(pos, make_adapter):
    adapter = make_adapter(timeout=1.0, budget=2.0)
    pos.plan("hold", Step("trickle", seconds=TRICKLE))
    started = time.monotonic()
    with pytest.raises(errors.InsufficientQuantity):
        hold(adapter, rid="SMALL", qty=3)
    assert time.monotonic() - started < 2.0 + TRICKLE_SLACK
    assert pos.count() == 1


def test_a_5xx_whose_body_trickles_is_retried_within_the_budget(pos, make_adapter):
    """Every attempt answers 502 and trickles its body: each is cut at its timeout, and the
    call ends near its budget, its outcome unknown (a PosTimeout if the last attempt, begun
    just before the deadline, got no status line in time)."""
    adapter = make_adapter(timeout=0.5, budget=2.0, retries=5)
    pos.plan("hold", Step("trickle", seconds=TRICKLE, status=502))
    started = time.monotonic()
    with pytest.raises((errors.PosError, errors.PosTimeout)) as caught:
        hold(adapter)
    assert time.monotonic() - started < 2.0 + TRICKLE_SLACK
    assert getattr(caught.value, "outcome_unknown", True)
    assert pos.count() >= 2


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_body_read_to_its_end_leaves_the_connection_to_be_reused(tls, tmp_path):
    """The body is read as a stream, and to its end the connection goes back to the pool: the
    next call is made on it (the POS double closes each connection, this POS keeps it). The
    deadline's watch over each attempt's socket leaves that alone, over TLS too (where the
    socket is watched from before the handshake)."""
    context, ca_file = None, None
    if tls:
        files = make_certificates(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files["cert"], files["key"])
        ca_file = str(files["ca"])
    with kept_alive_pos(context) as (url, calls):
        adapter = HttpPosAdapter(url, timeout=1.0, budget=2.0, ca_file=ca_file)
        try:
            hold(adapter, "g1")
            hold(adapter, "g2")
        finally:
            adapter.close()
    assert len(calls) == 2 and calls[0][1] == calls[1][1]


@contextmanager
def trickling_pos(answer: bytes, at_once: int, gap: float = 0.2) -> Iterator[tuple[str, list[int]]]:
    """A POS on loopback that reads a call and sends ``answer``: its first ``at_once`` bytes at
    once, then the rest a byte every ``gap`` seconds (each in time for any read timeout); yields
    its base URL and a list that gets one item per call it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    calls: list[int] = []

    def one(conn: socket.socket) -> None:
        with conn:
            if not conn.recv(65536):
                return
            calls.append(1)
            with suppress(OSError):
                conn.sendall(answer[:at_once])
                for i in range(at_once, len(answer)):
                    time.sleep(gap)
                    conn.sendall(answer[i : i + 1])

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api", calls
    finally:
        listener.close()


STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
#: An answer whose headers come in 12 s (60 bytes, one every 0.2 s).
SLOW_HEADERS = STATUS_LINE + b"X-Slow: " + b"y" * 40 + b"\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize(
    "at_once", [0, len(STATUS_LINE)], ids=["status-line-trickles", "headers-trickle"]
)
def test_an_answer_whose_head_trickles_is_a_timeout_within_the_budget(at_once):
    """docs/pos-vendors.md promises TEvo an answer in time "even when the POS hangs or trickles
    its answer". The deadline used to cover only the body: a status line or headers sent a byte
    at a time, each in time for the read timeout, held a call with a 0.5 s timeout and a 1 s
    budget 6 s and more. Now the attempt's socket is shut down at its deadline, whatever it is
    waiting for, and no status having come whole, the outcome is unknown: a 504."""
    with trickling_pos(SLOW_HEADERS, at_once) as (url, calls):
        adapter = HttpPosAdapter(url, timeout=0.5, budget=1.0)
        started = time.monotonic()
        try:
            with pytest.raises(errors.PosTimeout) as caught:
                hold(adapter)
        finally:
            adapter.close()
        assert time.monotonic() - started < 1.0 + SLACK
    assert caught.value.status == 504
    assert calls  # the POS got the call: its outcome is unknown


def test_an_attempt_whose_name_resolution_outlasts_its_deadline_sends_nothing(
    pos, make_adapter, monkeypatch
):
    """Name resolution has no timeout (getaddrinfo), and no deadline cuts it short: a resolver
    slower than the budget used to be followed by the call all the same, sent past the deadline
    (a hold the POS made while TEvo was already told 504). The attempt now ends once the name
    is resolved, before connecting: unavailable, nothing sent. (docs/operations.md says to name
    the POS by its address, or resolve through a local cache.)"""
    real = socket.getaddrinfo

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    adapter = make_adapter(pos.url.replace("127.0.0.1", "localhost"), timeout=1.0, budget=1.0)
    with pytest.raises(errors.Unavailable):
        hold(adapter)
    assert pos.count() == 0


def test_a_slow_first_attempt_is_retried_and_the_pos_holds_once(pos, make_adapter):
    adapter = make_adapter(timeout=0.3, budget=2.0)
    pos.slow("hold", 0.8, times=1)
    hold(adapter)  # the retry answers while the first attempt still sleeps
    pos.wait_idle()
    assert pos.count("hold") == 2
    assert pos.count("hold", effect="held") == 1
    assert pos.available("R") == 8


def test_an_attempt_that_timed_out_leaves_the_outcome_unknown(pos, make_adapter):
    """The first attempt times out (the POS holds the tickets late), the retry answers 500.

    The hold may have happened: the call's outcome is unknown, which the service must learn
    (PosTimeout) so that it compensates. A PosError says "refused": the service forgets the
    hold and the POS keeps the tickets for good.
    """
    adapter = make_adapter(timeout=0.3, budget=2.0)
    pos.plan("hold", Step("slow", seconds=0.6, times=1), Step("status", status=500))
    with pytest.raises(errors.PosTimeout):
        hold(adapter)
    pos.wait_idle()
    assert pos.state("g1") == "held"  # the first attempt did hold


@pytest.mark.parametrize(
    ("status", "refusal"), [(409, "insufficient_quantity"), (400, "pos_error")]
)
@pytest.mark.parametrize("operation", ["hold", "invoice"])
def test_a_refusal_after_an_attempt_that_timed_out_leaves_the_outcome_unknown(
    pos, make_adapter, operation, status, refusal
):
    """A retry refused (a 409 from a POS still busy with the first attempt, say) says nothing of
    the first attempt, which may have acted: for a hold the service must compensate, and for an
    invoice retry, never record the sale as refused (the buyer has paid)."""
    adapter = make_adapter(timeout=0.3, budget=2.0)
    if operation == "invoice":
        hold(adapter)
    pos.plan(operation, Step("slow", seconds=0.6, times=1), Step("status", status=status))
    call = {"hold": hold, "invoice": invoice}[operation]
    with pytest.raises(errors.PosTimeout, match=refusal):
        call(adapter)
    pos.wait_idle()
    assert pos.state("g1") == {"hold": "held", "invoice": "invoiced"}[operation]


#: An answer the POS gave after it acted: it failed late, or a gateway lost what it answered.
ACTED_THEN_502 = Step("acted", status=502, times=1)


@pytest.mark.parametrize(
    ("status", "refusal"),
    [(409, "insufficient_quantity"), (404, "listing_not_found"), (400, "pos_error")],
)
@pytest.mark.parametrize("operation", ["hold", "invoice"])
def test_a_refusal_after_a_5xx_leaves_the_outcome_unknown(
    pos, make_adapter, operation, status, refusal
):
    """The POS acts and its answer is lost to a 502; the retry is refused. The refusal says
    nothing of the first attempt: the outcome stays unknown, or the service forgets a hold the
    POS keeps for good, and drops an invoice the POS made (the buyer has paid)."""
    adapter = make_adapter(retries=2, budget=3.0)
    if operation == "invoice":
        hold(adapter)
    pos.plan(operation, ACTED_THEN_502, Step("status", status=status))
    with pytest.raises(errors.PosError, match=refusal) as caught:
        {"hold": hold, "invoice": invoice}[operation](adapter)
    assert caught.value.outcome_unknown
    assert [c.status for c in pos.calls(operation)][-2:] == [502, status]  # a refusal: no retry
    assert pos.state("g1") == {"hold": "held", "invoice": "invoiced"}[operation]


def test_an_unreachable_pos_after_a_5xx_leaves_the_outcome_unknown(pos, make_adapter):
    """The POS acts and answers 502, then cannot be reached: the retry sent nothing, and the
    first attempt's outcome is what counts, unknown (never a plain 503 unavailable, after which
    the service would forget the hold)."""
    dead = f"http://127.0.0.1:{free_port()}"

    class GoneAfterOneCall(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if pos.count():
                url = url.replace(pos.url.removesuffix("/pos"), dead)
            return super().request(method, url, *args, **kwargs)

    adapter = make_adapter(session=GoneAfterOneCall(), retries=2, budget=3.0)
    pos.plan("hold", ACTED_THEN_502)
    with pytest.raises(errors.PosError, match="unavailable") as caught:
        hold(adapter)
    assert caught.value.outcome_unknown
    assert pos.count() == 1 and pos.state("g1") == "held"


@pytest.mark.parametrize(
    "first", [ACTED_THEN_502, Step("slow", seconds=0.6, times=1)], ids=["5xx", "timeout"]
)
def test_a_release_whose_retry_finds_no_listing_is_done(pos, make_adapter, first):
    """Whatever the first attempt did, a POS with no such listing holds nothing of it: the
    release is done (a retry of a release asks for the same end, so its answer settles it)."""
    adapter = make_adapter(timeout=0.3, budget=2.0)
    hold(adapter)
    pos.plan("release", first, Step("status", status=404))
    release(adapter)
    pos.wait_idle()
    assert [c.status for c in pos.calls("release")][-1] == 404
    assert pos.state("g1") == "released"


@pytest.fixture
def service(adapter: HttpPosAdapter) -> Iterator[HoldService]:
    """A service on the ``adapter``, with a lease just above its budget (as settings require)."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield HoldService(Ledger(client, keys=KeySpace("t")), adapter, lease=2.5)
    client.close()


def run_when_due(worker: Worker, timeout: float = 5.0) -> int:
    """The worker's first round that has work (a compensation is due a lease after the hold's
    outcome was found unknown), polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (done := worker.run_once()):
        assert time.monotonic() < deadline, "no work came due"
        time.sleep(0.02)
    return done


def test_a_hold_the_pos_made_before_a_5xx_and_a_409_is_released_by_the_worker(pos, service):
    pos.plan("hold", ACTED_THEN_502, Step("status", status=409))
    with pytest.raises(errors.PosError):
        service.hold(remote_id="R", quantity=2, global_id="g1")
    assert pos.state("g1") == "held" and pos.available("R") == 8
    assert run_when_due(Worker(service)) == 1  # the compensation, a lease later
    assert pos.state("g1") == "released" and pos.available("R") == 10


def test_an_invoice_the_pos_made_before_a_5xx_and_a_409_is_retried_not_dropped(pos, service):
    service.hold(remote_id="R", quantity=2, global_id="g1")
    pos.plan("invoice", ACTED_THEN_502, Step("status", status=409))
    with pytest.raises(errors.PosError):  # not HoldExpired: the buyer has paid
        service.invoice(global_id="g1", tevo_order_id=7)
    assert pos.state("g1") == "invoiced"
    assert service.get(global_id="g1").status is HoldStatus.INVOICE_FAILED
    assert list(service.ledger.scheduled("i")) == ["g1"]


# -- settings: custom paths and header, adapters by name ------------------------------------------


def test_custom_paths_and_header_via_settings():
    paths = {"hold": "/v2/hold", "release": "/v2/unhold", "invoice": "/v2/sell"}
    with pos_double({"R": 10}, paths=paths, auth_header="X-Pos-Token", api_key="tok") as pos:
        settings = Settings.from_env(
            {
                "TEVO_HOLD_API_KEYS": "k",
                "TEVO_HOLD_ADAPTER": "http",
                "TEVO_HOLD_POS_URL": pos.url,
                "TEVO_HOLD_POS_API_KEY": "tok",
                "TEVO_HOLD_POS_AUTH_HEADER": "X-Pos-Token",
                "TEVO_HOLD_POS_HOLD_PATH": "/v2/hold",
                "TEVO_HOLD_POS_RELEASE_PATH": "/v2/unhold",
                "TEVO_HOLD_POS_INVOICE_PATH": "/v2/sell",
                "TEVO_HOLD_POS_TIMEOUT": "0.7",
                "TEVO_HOLD_POS_BUDGET": "1.5",
                "TEVO_HOLD_POS_RETRIES": "1",
            }
        )
        service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
        try:
            adapter = service.adapter
            assert isinstance(adapter, HttpPosAdapter)
            assert (adapter.timeout, adapter.budget, adapter.retries) == (0.7, 1.5, 1)
            service.hold(remote_id="R", quantity=2, global_id="g1")
            service.invoice(global_id="g1", tevo_order_id=7)
            service.hold(remote_id="R", quantity=1, global_id="g2")
            service.release(global_id="g2")
        finally:
            service.close()
        assert [(c.operation, c.global_id, c.status) for c in pos.calls()] == [
            ("hold", "g1", 200),
            ("invoice", "g1", 200),
            ("hold", "g2", 200),
            ("release", "g2", 200),
        ]
        for call in pos.calls():
            assert call.headers["X-Pos-Token"] == "tok"
            assert "X-Api-Key" not in call.headers
        assert pos.sold == {"R": 2} and pos.available("R") == 8


def test_build_service_with_settings_http(pos):
    settings = Settings(api_keys=("k",), adapter="http", pos_url=pos.url, pos_api_key=pos.api_key)
    service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    try:
        assert isinstance(service.adapter, HttpPosAdapter)
        assert service.adapter.paths == {
            "hold": "/holds",
            "release": "/releases",
            "invoice": "/invoices",
        }
        held = service.hold(remote_id="R", quantity=3, global_id="g1").hold
        assert held.status == "held"
    finally:
        service.close()
    assert pos.available("R") == 7


def test_adapter_http_needs_a_pos_url():
    with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_POS_URL"):
        Settings.from_env({"TEVO_HOLD_API_KEYS": "k", "TEVO_HOLD_ADAPTER": "http"})


class BuiltFromSettings(RecordingPos):
    """An adapter named by dotted path that builds itself from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls = []

    @classmethod
    def from_settings(cls, settings: Settings) -> BuiltFromSettings:
        return cls(settings)


class BuiltPlain(BuiltFromSettings):
    """An adapter without from_settings: built with no arguments."""

    from_settings = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(Settings())


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tests.test_http_adapter:BuiltFromSettings", BuiltFromSettings),
        ("tests.test_http_adapter.BuiltFromSettings", BuiltFromSettings),
        ("tests.test_http_adapter:BuiltPlain", BuiltPlain),
    ],
)
def test_an_adapter_class_by_dotted_path(name, cls):
    settings = Settings.from_env(
        {"TEVO_HOLD_API_KEYS": "k", "TEVO_HOLD_ADAPTER": name, "TEVO_HOLD_HOLD_TTL": "60"}
    )
    service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    try:
        adapter = service.adapter
        assert type(adapter) is cls
        if cls is BuiltFromSettings:
            assert adapter.settings is settings
        service.hold(remote_id="R", quantity=1, global_id="g1")
        service.release(global_id="g1")
        assert adapter.calls == [("hold", "g1"), ("release", "g1")]
        assert service.get(global_id="g1").expires_at - service.get(
            global_id="g1"
        ).created_at == timedelta(seconds=60)
    finally:
        service.close()


@pytest.mark.parametrize(
    "name",
    [
        "no_such_module_xyz:Adapter",
        "no_such_module_xyz.Adapter",
        "tevo_hold.adapters.http:NoSuchClass",
        "tevo_hold.adapters.http.NoSuchClass",
        "justaword",
        "json:JSONDecoder",  # importable, but not a PosAdapter
        "tevo_hold.errors:DEMO",
        "tevo_hold.settings:DEMO_API_KEY",  # not a class
    ],
)
def test_a_bad_dotted_path_is_a_configuration_error(name):
    settings = Settings(api_keys=("k",), adapter=name)
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        with pytest.raises(errors.ConfigurationError, match="TEVO_HOLD_ADAPTER"):
            build_service(settings, client=client)
    finally:
        client.close()


class MissingMethods(PosAdapter):
    """A vendor's adapter that forgot release and invoice."""

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        pass


class NeedsArguments(BuiltPlain):
    """An adapter whose __init__ takes arguments, with no from_settings to give them."""

    def __init__(self, base_url: str) -> None:
        super().__init__()


class FromSettingsFails(BuiltFromSettings):
    """The vendor guide's from_settings (os.environ[...]) run without its variable."""

    @classmethod
    def from_settings(cls, settings: Settings) -> FromSettingsFails:
        os.environ["ACME_POS_URL"]  # read for its KeyError
        return cls(settings)


class FromSettingsTypeError(BuiltFromSettings):
    """A from_settings with a bug of its own that raises TypeError."""

    @classmethod
    def from_settings(cls, settings: Settings) -> FromSettingsTypeError:
        raise TypeError("float() argument must be a string or a real number, not 'NoneType'")


@pytest.mark.parametrize(
    ("cls", "says"),
    [
        (MissingMethods, "the class does not define invoice, release, which every"),
        (NeedsArguments, "the class needs arguments (missing a required argument: 'base_url'); "),
        (FromSettingsFails, "FromSettingsFails.from_settings(settings) failed: KeyError: "),
        (FromSettingsTypeError, "FromSettingsTypeError.from_settings(settings) failed: TypeError:"),
    ],
    ids=["missing-methods", "needs-arguments", "keyerror", "typeerror"],
)
def test_an_adapter_class_that_cannot_be_built_is_told_why(
    monkeypatch: pytest.MonkeyPatch, cls: type[PosAdapter], says: str
) -> None:
    """One line naming the setting and the cause. A missing method, or a TypeError raised
    inside a from_settings, was called "the class needs arguments; give it a classmethod
    from_settings": the wrong fix; any other error of from_settings (the KeyError of the
    guide's os.environ[...]) was a traceback out of the command and the server's start."""
    monkeypatch.delenv("ACME_POS_URL", raising=False)
    name = f"tests.test_http_adapter:{cls.__name__}"
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        with pytest.raises(errors.ConfigurationError) as info:
            build_service(Settings(api_keys=("k",), adapter=name), client=client)
    finally:
        client.close()
    assert str(info.value).startswith(f"TEVO_HOLD_ADAPTER={name!r}: {says}"), info.value
    if cls is not NeedsArguments:
        assert "needs arguments" not in str(info.value)
