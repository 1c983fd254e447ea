"""The HTTP contract (version 1), through the Flask test client, on fakeredis and real Redis.

Each error test checks the status, the problem document (``application/problem+json`` with a
stable ``code``) and that the refused request changed nothing.
"""

from __future__ import annotations

import io
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import DechunkedInput
from werkzeug.test import TestResponse

from tevo_hold import (
    HoldService,
    HoldStatus,
    Ledger,
    PosAdapter,
    RedisInventoryAdapter,
    Settings,
    TevoHold,
    build_service,
    create_app,
)
from tevo_hold import errors as e
from tevo_hold.connection import RedisClient, connect
from tevo_hold.worker import Worker

from .conftest import API_KEY, AUTH
from .servers import free_port

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


# -- helpers -----------------------------------------------------------------------------------


def app_for(service: HoldService) -> FlaskClient:
    """A test client of an app serving ``service``, accepting the tests' API key."""
    app = create_app({"TEVO_HOLD_API_KEYS": API_KEY, "TESTING": True}, service=service)
    return app.test_client()


def hold(
    http: FlaskClient, gid: str = "g1", rid: str = "L1", qty: Any = 2, **kw: Any
) -> TestResponse:
    return http.post(
        "/v1/holds", json={"remote_id": rid, "quantity": qty, "global_id": gid}, headers=AUTH, **kw
    )


def release(http: FlaskClient, gid: str = "g1") -> TestResponse:
    return http.post("/v1/releases", json={"global_id": gid}, headers=AUTH)


def invoice(http: FlaskClient, gid: str = "g1", order: Any = 7) -> TestResponse:
    return http.post("/v1/invoices", json={"global_id": gid, "tevo_order_id": order}, headers=AUTH)


def get_hold(http: FlaskClient, gid: str = "g1") -> TestResponse:
    return http.get("/v1/holds/" + quote(gid, safe=""), headers=AUTH)


def post_raw(
    http: FlaskClient,
    path: str,
    data: str | bytes,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
) -> TestResponse:
    return http.post(path, data=data, content_type=content_type, headers=headers or AUTH)


def body_of(resp: TestResponse) -> Any:
    """The body parsed as JSON, whatever the content type (and failing if it is not JSON)."""
    return json.loads(resp.get_data(as_text=True))


def assert_ok(resp: TestResponse, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body: dict[str, Any] = body_of(resp)
    return body


def assert_problem(resp: TestResponse, status: int, code: str) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem document with this status and code."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body: dict[str, Any] = body_of(resp)
    assert body.keys() >= PROBLEM_MEMBERS
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


#: What GET /v1/holds/<global_id> adds to the hold that the other calls answer.
DETAIL_FIELDS = {"events", "last_error", "invoice_attempts"}


def hold_now(http: FlaskClient, gid: str = "g1") -> dict[str, Any]:
    """The hold as GET answers it, without the fields only GET has."""
    body = assert_ok(get_hold(http, gid), 200)
    assert body.keys() >= DETAIL_FIELDS
    return {k: v for k, v in body.items() if k not in DETAIL_FIELDS}


def assert_no_hold(http: FlaskClient, gid: str = "g1") -> None:
    assert_problem(get_hold(http, gid), 404, "hold_not_found")


def parse_time(text: str) -> datetime:
    assert RFC3339_UTC.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def stocked(inventory: RedisInventoryAdapter) -> RedisInventoryAdapter:
    inventory.set_quantity("L1", 5)
    return inventory


# -- success -----------------------------------------------------------------------------------


def test_hold_answers_201_with_the_hold(http, stocked):
    resp = hold(http)
    body = assert_ok(resp, 201)
    assert "Idempotent-Replayed" not in resp.headers
    assert body["global_id"] == "g1"
    assert body["remote_id"] == "L1"
    assert body["quantity"] == 2
    assert body["status"] == "held"
    created, expires = parse_time(body["created_at"]), parse_time(body["expires_at"])
    assert 899 <= (expires - created).total_seconds() <= 900
    assert stocked.stock("L1").held == 2
    assert stocked.stock("L1").available == 3


def test_get_hold_answers_200_with_the_hold_and_its_audit_trail(http, stocked):
    made = assert_ok(hold(http), 201)
    assert hold_now(http) == made
    got = assert_ok(get_hold(http), 200)
    assert got["events"][-1]["event"] == "held" and got["events"][-1]["by"] == "api"
    assert got["last_error"] is None and got["invoice_attempts"] == 0


def test_release_answers_200_with_status_released_and_gives_tickets_back(http, stocked):
    hold(http)
    body = assert_ok(release(http), 200)
    assert body["global_id"] == "g1"
    assert body["status"] == "released"
    assert stocked.stock("L1").available == 5
    assert assert_ok(get_hold(http), 200)["status"] == "released"


def test_invoice_answers_201_with_status_invoiced_and_sells_the_tickets(http, stocked):
    hold(http)
    body = assert_ok(invoice(http, order=7), 201)
    assert body["global_id"] == "g1"
    assert body["status"] == "invoiced"
    assert body["tevo_order_id"] == 7
    parse_time(body["invoiced_at"])
    stock = stocked.stock("L1")
    assert (stock.on_hand, stock.held, stock.sold) == (3, 0, 2)
    assert assert_ok(get_hold(http), 200)["status"] == "invoiced"


def test_invoice_accepts_a_string_order_id(http, stocked):
    hold(http)
    assert assert_ok(invoice(http, order="ORD-7"), 201)["tevo_order_id"] == "ORD-7"


def test_healthz_answers_200_json_without_a_key(http):
    assert_ok(http.get("/healthz"), 200)


def test_quantity_2_point_0_is_accepted_as_2(http, stocked):
    raw = '{"remote_id": "L1", "quantity": 2.0, "global_id": "g1"}'
    body = assert_ok(post_raw(http, "/v1/holds", raw), 201)
    assert body["quantity"] == 2 and type(body["quantity"]) is int
    assert stocked.stock("L1").held == 2


def test_quantity_1e1_is_accepted_as_10(http, inventory):
    inventory.set_quantity("L1", 10)
    raw = '{"remote_id": "L1", "quantity": 1e1, "global_id": "g1"}'
    body = assert_ok(post_raw(http, "/v1/holds", raw), 201)
    assert body["quantity"] == 10 and type(body["quantity"]) is int
    assert inventory.stock("L1").held == 10


def test_content_type_with_charset_is_accepted(http, stocked):
    raw = json.dumps({"remote_id": "L1", "quantity": 1, "global_id": "g1"})
    assert_ok(post_raw(http, "/v1/holds", raw, "application/json; charset=utf-8"), 201)


def test_quantity_of_10000_is_accepted(http, inventory):
    inventory.set_quantity("L1", 10000)
    assert assert_ok(hold(http, qty=10000), 201)["quantity"] == 10000


def test_largest_integer_order_id_is_accepted(http, stocked):
    hold(http)
    assert assert_ok(invoice(http, order=2**63 - 1), 201)["tevo_order_id"] == 2**63 - 1


def test_ids_of_255_characters_are_accepted(http, inventory):
    rid, gid = "r" * 255, "g" * 255
    inventory.set_quantity(rid, 1)
    assert assert_ok(hold(http, gid=gid, rid=rid, qty=1), 201)["global_id"] == gid
    assert assert_ok(get_hold(http, gid), 200)["remote_id"] == rid


def test_body_of_exactly_64_kib_is_accepted(http, stocked):
    base = {"remote_id": "L1", "quantity": 1, "global_id": "g1", "pad": ""}
    pad = 65536 - len(json.dumps(base).encode())
    raw = json.dumps({**base, "pad": "x" * pad})
    assert len(raw.encode()) == 65536
    assert_ok(post_raw(http, "/v1/holds", raw), 201)


# -- idempotent retries ------------------------------------------------------------------------


def test_hold_repeated_replays_the_first_response(http, stocked):
    first = hold(http)
    again = hold(http)
    assert again.status_code == first.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert body_of(again) == body_of(first)
    assert again.mimetype == "application/json"
    assert stocked.stock("L1").held == 2


def test_hold_repeated_after_invoice_still_replays_the_hold_response(http, stocked):
    first = hold(http)
    invoice(http)
    again = hold(http)
    assert again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert body_of(again) == body_of(first)
    assert stocked.stock("L1").sold == 2


def test_hold_repeated_after_release_still_replays_the_hold_response(http, stocked):
    first = hold(http)
    release(http)
    again = hold(http)
    assert again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert body_of(again) == body_of(first)
    assert stocked.stock("L1").held == 0


def test_invoice_repeated_replays_the_first_response(http, stocked):
    hold(http)
    first = invoice(http)
    assert "Idempotent-Replayed" not in first.headers
    again = invoice(http)
    assert again.status_code == first.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert body_of(again) == body_of(first)
    assert stocked.stock("L1").sold == 2


def test_release_repeated_answers_200_again(http, stocked):
    hold(http)
    first = assert_ok(release(http), 200)
    again = assert_ok(release(http), 200)
    assert again["status"] == first["status"] == "released"
    assert stocked.stock("L1").available == 5


# -- 400 invalid_request -----------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["remote_id", "quantity", "global_id"])
def test_hold_missing_field_is_invalid_request(http, stocked, missing):
    body = {"remote_id": "L1", "quantity": 2, "global_id": "g1"}
    del body[missing]
    before = stocked.stock("L1")
    problem = assert_problem(
        http.post("/v1/holds", json=body, headers=AUTH), 400, "invalid_request"
    )
    assert missing in problem["errors"]
    assert stocked.stock("L1") == before
    assert_no_hold(http)


def test_release_missing_global_id_is_invalid_request(http, stocked):
    hold(http)
    problem = assert_problem(
        http.post("/v1/releases", json={}, headers=AUTH), 400, "invalid_request"
    )
    assert "global_id" in problem["errors"]
    assert assert_ok(get_hold(http), 200)["status"] == "held"


@pytest.mark.parametrize("missing", ["global_id", "tevo_order_id"])
def test_invoice_missing_field_is_invalid_request(http, stocked, missing):
    hold(http)
    body = {"global_id": "g1", "tevo_order_id": 7}
    del body[missing]
    problem = assert_problem(
        http.post("/v1/invoices", json=body, headers=AUTH), 400, "invalid_request"
    )
    assert missing in problem["errors"]
    assert assert_ok(get_hold(http), 200)["status"] == "held"
    assert stocked.stock("L1").sold == 0


@pytest.mark.parametrize(
    "quantity",
    [True, False, 2.5, "2", None, [], {}, 0, -1, 10001],
    ids=["true", "false", "2.5", "str", "null", "list", "object", "0", "-1", "10001"],
)
def test_hold_bad_quantity_is_invalid_request(http, stocked, quantity):
    before = stocked.stock("L1")
    problem = assert_problem(hold(http, qty=quantity), 400, "invalid_request")
    assert "quantity" in problem["errors"]
    assert stocked.stock("L1") == before
    assert_no_hold(http)


BAD_IDS = pytest.mark.parametrize(
    "bad",
    ["", 7, None, True, [], {}, "x" * 256],
    ids=["empty", "int", "null", "bool", "list", "object", "256-chars"],
)


@BAD_IDS
def test_hold_bad_global_id_is_invalid_request(http, stocked, bad):
    before = stocked.stock("L1")
    problem = assert_problem(hold(http, gid=bad), 400, "invalid_request")
    assert "global_id" in problem["errors"]
    assert stocked.stock("L1") == before


@BAD_IDS
def test_hold_bad_remote_id_is_invalid_request(http, stocked, bad):
    before = stocked.stock("L1")
    problem = assert_problem(hold(http, rid=bad), 400, "invalid_request")
    assert "remote_id" in problem["errors"]
    assert stocked.stock("L1") == before
    assert_no_hold(http)


@BAD_IDS
def test_release_bad_global_id_is_invalid_request(http, stocked, bad):
    problem = assert_problem(
        http.post("/v1/releases", json={"global_id": bad}, headers=AUTH), 400, "invalid_request"
    )
    assert "global_id" in problem["errors"]


@pytest.mark.parametrize(
    "order",
    [True, 0, -1, 2.5, 2**63, "", None, [], {}, "x" * 256],
    ids=["bool", "0", "-1", "2.5", "2**63", "empty", "null", "list", "object", "256-chars"],
)
def test_invoice_bad_order_id_is_invalid_request(http, stocked, order):
    hold(http)
    problem = assert_problem(invoice(http, order=order), 400, "invalid_request")
    assert "tevo_order_id" in problem["errors"]
    assert assert_ok(get_hold(http), 200)["status"] == "held"
    assert stocked.stock("L1").sold == 0


def test_hold_lone_surrogate_global_id_is_invalid_request(http, stocked):
    raw = '{"remote_id": "L1", "quantity": 2, "global_id": "\\ud800"}'
    before = stocked.stock("L1")
    problem = assert_problem(post_raw(http, "/v1/holds", raw), 400, "invalid_request")
    assert "global_id" in problem["errors"]
    assert stocked.stock("L1") == before


def test_hold_lone_surrogate_remote_id_is_invalid_request(http, stocked):
    raw = '{"remote_id": "L1\\udfff", "quantity": 2, "global_id": "g1"}'
    before = stocked.stock("L1")
    problem = assert_problem(post_raw(http, "/v1/holds", raw), 400, "invalid_request")
    assert "remote_id" in problem["errors"]
    assert stocked.stock("L1") == before
    assert_no_hold(http)


def test_release_and_invoice_of_lone_surrogate_global_id_are_invalid_request(http, stocked):
    raw = '{"global_id": "\\ud800"}'
    assert_problem(post_raw(http, "/v1/releases", raw), 400, "invalid_request")
    raw = '{"global_id": "\\ud800", "tevo_order_id": 7}'
    assert_problem(post_raw(http, "/v1/invoices", raw), 400, "invalid_request")


#: Bodies naming a member twice: (path, the member, the body).
_TWICE = {
    "quantity": (
        "/v1/holds",
        "quantity",
        '{"remote_id": "L1", "quantity": 1, "quantity": 5, "global_id": "g1"}',
    ),
    "same-value": (
        "/v1/holds",
        "global_id",
        '{"remote_id": "L1", "quantity": 2, "global_id": "g1", "global_id": "g1"}',
    ),
    "nested-ignored": (
        "/v1/holds",
        "a",
        '{"remote_id": "L1", "quantity": 2, "global_id": "g1", "x": [{"a": 1, "a": 1}]}',
    ),
    "release": ("/v1/releases", "global_id", '{"global_id": "g0", "global_id": "g1"}'),
    "invoice": (
        "/v1/invoices",
        "tevo_order_id",
        '{"global_id": "g1", "tevo_order_id": 7, "tevo_order_id": 8}',
    ),
}


@pytest.mark.parametrize("case", sorted(_TWICE))
def test_body_naming_a_member_twice_is_invalid_request(http, stocked, case):
    """json.loads keeps the last of two members of one name, other parsers the first: which one
    a client meant is unknowable, so the body is refused, wherever the object is."""
    path, name, raw = _TWICE[case]
    if path != "/v1/holds":
        hold(http)
    before = stocked.stock("L1")
    problem = assert_problem(post_raw(http, path, raw), 400, "invalid_request")
    assert f"names the member '{name}' more than once" in problem["detail"]
    assert stocked.stock("L1") == before
    if path == "/v1/holds":
        assert_no_hold(http)
    else:
        assert assert_ok(get_hold(http), 200)["status"] == "held"


@pytest.mark.parametrize("raw", ["[1]", '"g1"', "1", "null", "true", "[]"])
@pytest.mark.parametrize("path", ["/v1/holds", "/v1/releases", "/v1/invoices"])
def test_body_that_is_not_an_object_is_invalid_request(http, stocked, path, raw):
    hold(http)
    before = stocked.stock("L1")
    assert_problem(post_raw(http, path, raw), 400, "invalid_request")
    assert stocked.stock("L1") == before
    assert assert_ok(get_hold(http), 200)["status"] == "held"


# -- 400 malformed_json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"remote_id": "L1", "quantity": 2,',
        b'{"remote_id": "L1", "quantity": 2, "global_id": "g1"} trailing',
        b"",
        b'{"remote_id": "L1", "quantity": NaN, "global_id": "g1"}',
        b'{"remote_id": "L1", "quantity": Infinity, "global_id": "g1"}',
        b'{"remote_id": "L1", "quantity": -Infinity, "global_id": "g1"}',
        b'{"remote_id": "L\xff1", "quantity": 2, "global_id": "g1"}',
        b'{"remote_id": "L1", "quantity": 2, "global_id": "g\xc3"}',
        b'\xef\xbb\xbf{"remote_id": "L1", "quantity": 2, "global_id": "g1"}',
    ],
    ids=[
        "truncated",
        "trailing",
        "empty",
        "NaN",
        "Infinity",
        "-Infinity",
        "0xff",
        "cut-utf8",
        "bom",
    ],
)
def test_hold_malformed_json(http, stocked, raw):
    before = stocked.stock("L1")
    problem = assert_problem(post_raw(http, "/v1/holds", raw), 400, "malformed_json")
    assert stocked.stock("L1") == before
    assert_no_hold(http)
    # The detail says what json.loads says of the body (the view has a decoder of its own);
    # json.loads takes NaN and Infinity, which the view refuses.
    try:
        json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        assert problem["detail"] == f"The body is not valid UTF-8 JSON: {exc}"


@pytest.mark.parametrize("nested", ["[", '{"a":'], ids=["arrays", "objects"])
@pytest.mark.parametrize("path", ["/v1/holds", "/v1/releases", "/v1/invoices"])
def test_body_nested_too_deeply_is_malformed_json(http, stocked, path, nested):
    """An ignored extra member nested deeper than the decoder recurses (a RecursionError)."""
    closing = "]" if nested == "[" else "}"
    deep = nested * 5000 + "1" + closing * 5000
    raw = f'{{"remote_id": "L1", "quantity": 2, "global_id": "g1", "pad": {deep}}}'
    assert len(raw) < 65536
    before = stocked.stock("L1")
    problem = assert_problem(post_raw(http, path, raw), 400, "malformed_json")
    assert "nested too deeply" in problem["detail"]
    assert stocked.stock("L1") == before
    assert_no_hold(http)


@pytest.mark.parametrize("path", ["/v1/releases", "/v1/invoices"])
def test_release_and_invoice_malformed_json(http, stocked, path):
    hold(http)
    assert_problem(post_raw(http, path, b'{"global_id": "g1"'), 400, "malformed_json")
    assert assert_ok(get_hold(http), 200)["status"] == "held"


# -- 401 unauthorized --------------------------------------------------------------------------


def assert_unauthorized(resp: TestResponse) -> None:
    assert_problem(resp, 401, "unauthorized")
    assert resp.headers.get("WWW-Authenticate")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": ""},
        {"X-API-Key": API_KEY + "x"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
    ],
    ids=["none", "wrong", "empty", "longer", "bearer-wrong", "bearer-empty", "basic", "bare"],
)
def test_hold_without_a_valid_key_is_unauthorized_and_holds_nothing(http, stocked, headers):
    body = {"remote_id": "L1", "quantity": 2, "global_id": "g1"}
    before = stocked.stock("L1")
    assert_unauthorized(http.post("/v1/holds", json=body, headers=headers))
    assert stocked.stock("L1") == before
    assert_no_hold(http)


def test_release_invoice_and_get_without_a_key_are_unauthorized(http, stocked):
    hold(http)
    assert_unauthorized(http.post("/v1/releases", json={"global_id": "g1"}))
    assert_unauthorized(http.post("/v1/invoices", json={"global_id": "g1", "tevo_order_id": 7}))
    assert_unauthorized(http.get("/v1/holds/g1"))
    assert assert_ok(get_hold(http), 200)["status"] == "held"
    assert stocked.stock("L1").held == 2


def test_bad_body_without_a_key_is_unauthorized(http):
    assert_unauthorized(http.post("/v1/holds", data="{broken", content_type="application/json"))


def test_bearer_key_is_accepted(http, stocked):
    body = {"remote_id": "L1", "quantity": 2, "global_id": "g1"}
    resp = http.post("/v1/holds", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert_ok(resp, 201)
    resp = http.get("/v1/holds/g1", headers={"Authorization": f"Bearer {API_KEY}"})
    assert_ok(resp, 200)


def test_an_empty_x_api_key_counts_as_absent_beside_a_bearer_key(http, stocked):
    both = {"X-API-Key": "", "Authorization": f"Bearer {API_KEY}"}
    body = {"remote_id": "L1", "quantity": 2, "global_id": "g1"}
    assert_ok(http.post("/v1/holds", json=body, headers=both), 201)
    assert_ok(http.get("/v1/holds/g1", headers=both), 200)
    # ... but a wrong one still decides, whatever the Authorization header says
    wrong = {**both, "X-API-Key": "wrong"}
    assert_unauthorized(http.post("/v1/releases", json={"global_id": "g1"}, headers=wrong))
    assert assert_ok(get_hold(http), 200)["status"] == "held"


# -- 404 ---------------------------------------------------------------------------------------


def test_hold_of_unknown_listing_is_listing_not_found(http, stocked):
    assert_problem(hold(http, rid="nope"), 404, "listing_not_found")
    assert_no_hold(http)
    assert stocked.stock("L1").held == 0


def test_release_of_unknown_hold_is_hold_not_found(http):
    assert_problem(release(http, "nope"), 404, "hold_not_found")
    assert_no_hold(http, "nope")


def test_invoice_of_unknown_hold_is_hold_not_found(http):
    assert_problem(invoice(http, "nope"), 404, "hold_not_found")
    assert_no_hold(http, "nope")


def test_get_of_unknown_hold_is_hold_not_found(http):
    assert_problem(http.get("/v1/holds/nope", headers=AUTH), 404, "hold_not_found")


@pytest.mark.parametrize("path", ["/nope", "/v1/hold", "/v2/holds", "/v1/holds/", "/"])
def test_unknown_path_is_not_found_json(http, path):
    assert_problem(http.get(path, headers=AUTH), 404, "not_found")
    assert_problem(http.post(path, json={}, headers=AUTH), 404, "not_found")


def test_unknown_path_without_a_key_still_answers_a_problem_document(http):
    resp = http.get("/nope")
    assert resp.status_code in (401, 404)
    assert_problem(
        resp, resp.status_code, "unauthorized" if resp.status_code == 401 else "not_found"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v1//holds",
        "//v1/holds",
        "/v1//releases",
        "/v1//invoices",
        "/v1//openapi.json",
        "/docs//swagger-ui.css",
        "//healthz",
        "/v1//holds/g1",
    ],
)
def test_a_path_with_a_doubled_slash_is_not_found_and_never_redirected(http, stocked, path):
    """werkzeug merges "//" into "/" and answers a 308 redirect (an HTML page that no error
    handler sees), or a 405 naming the methods of the merged path: the API's paths are exactly
    as documented, any other is a 404 problem whatever the method, and nothing is held."""
    body = {"remote_id": "L1", "quantity": 1, "global_id": "g1"}
    for method in ("GET", "POST", "PUT"):
        resp = http.open(path, method=method, headers=AUTH, json=body)
        assert_problem(resp, 404, "not_found")
        assert "Location" not in resp.headers
    assert_no_hold(http)


def test_get_of_over_long_global_id_is_invalid_request(http):
    assert_problem(http.get("/v1/holds/" + "g" * 256, headers=AUTH), 400, "invalid_request")


# -- 405 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/releases", "POST"),
        ("GET", "/v1/invoices", "POST"),
        ("GET", "/v1/holds", "POST"),
        ("PUT", "/v1/holds", "POST"),
        ("OPTIONS", "/v1/holds", "POST"),
        ("DELETE", "/v1/holds/g1", "GET, HEAD"),
        ("POST", "/v1/holds/g1", "GET, HEAD"),
        ("OPTIONS", "/v1/holds/g1", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("OPTIONS", "/healthz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_method_not_allowed_with_allow_header(http, stocked, method, path, allowed):
    """Allow lists exactly the methods the path takes: OPTIONS is not one of them (Flask's
    automatic OPTIONS answered an empty 200 text/html), HEAD is, wherever GET is."""
    hold(http)
    resp = http.open(path, method=method, headers=AUTH, json={"global_id": "g1"})
    assert_problem(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == allowed
    assert assert_ok(get_hold(http), 200)["status"] == "held"


def test_head_answers_what_get_does_without_the_body(http, stocked):
    hold(http)
    for path in ("/v1/holds/g1", "/v1/holds/nope"):
        got, head = http.get(path, headers=AUTH), http.head(path, headers=AUTH)
        assert head.status_code == got.status_code
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
        assert head.headers["Content-Length"] == got.headers["Content-Length"]
        assert head.get_data() == b""


# -- 409 ---------------------------------------------------------------------------------------


def test_hold_over_the_available_quantity_is_insufficient_quantity(http, stocked):
    hold(http, "a", qty=4)
    before = stocked.stock("L1")
    problem = assert_problem(hold(http, "b", qty=2), 409, "insufficient_quantity")
    assert problem.get("available") == 1
    assert stocked.stock("L1") == before
    assert_no_hold(http, "b")


def test_hold_of_sold_out_listing_is_insufficient_quantity(http, inventory):
    inventory.set_quantity("L0", 0)
    assert_problem(hold(http, rid="L0", qty=1), 409, "insufficient_quantity")
    assert_no_hold(http)


@pytest.mark.parametrize(("rid", "qty"), [("L1", 3), ("L2", 2)], ids=["quantity", "remote_id"])
def test_hold_reusing_a_global_id_differently_is_global_id_conflict(http, stocked, rid, qty):
    stocked.set_quantity("L2", 5)
    first = assert_ok(hold(http), 201)
    before = (stocked.stock("L1"), stocked.stock("L2"))
    assert_problem(hold(http, rid=rid, qty=qty), 409, "global_id_conflict")
    assert (stocked.stock("L1"), stocked.stock("L2")) == before
    assert hold_now(http) == first


def test_invoice_after_release_is_hold_released(http, stocked):
    hold(http)
    release(http)
    assert_problem(invoice(http), 409, "hold_released")
    stock = stocked.stock("L1")
    assert (stock.on_hand, stock.held, stock.sold) == (5, 0, 0)
    assert assert_ok(get_hold(http), 200)["status"] == "released"


def test_release_after_invoice_is_hold_already_invoiced(http, stocked):
    hold(http)
    invoice(http)
    before = stocked.stock("L1")
    assert_problem(release(http), 409, "hold_already_invoiced")
    assert stocked.stock("L1") == before
    assert assert_ok(get_hold(http), 200)["status"] == "invoiced"


def test_invoice_under_another_order_id_is_order_id_conflict(http, stocked):
    hold(http)
    first = assert_ok(invoice(http, order=7), 201)
    before = stocked.stock("L1")
    assert_problem(invoice(http, order=8), 409, "order_id_conflict")
    assert_problem(invoice(http, order="7x"), 409, "order_id_conflict")
    assert stocked.stock("L1") == before
    assert hold_now(http) == first


def test_hold_while_another_request_holds_the_global_id_is_request_in_progress(
    http, service, stocked
):
    service.ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="someone-else")
    resp = hold(http)
    assert_problem(resp, 409, "request_in_progress")
    assert int(resp.headers["Retry-After"]) >= 1
    assert stocked.stock("L1").held == 0


def test_invoice_while_another_invoice_runs_is_request_in_progress(http, service, stocked):
    hold(http)
    service.ledger.claim_invoice("g1", 7, lease=10, token="someone-else")
    resp = invoice(http, order=7)
    assert_problem(resp, 409, "request_in_progress")
    assert int(resp.headers["Retry-After"]) >= 1
    assert stocked.stock("L1").sold == 0


# -- 410 and lapsed holds ----------------------------------------------------------------------

TTL = 0.2


def test_the_longest_durations_the_settings_take_work_end_to_end(make_service):
    """100 years (MAX_SECONDS) of hold, lease and retention: every time still reads back."""
    from tevo_hold.settings import MAX_SECONDS

    longest = make_service(hold_ttl=MAX_SECONDS, lease=MAX_SECONDS, retention=MAX_SECONDS)
    longest.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    http = app_for(longest)
    held = assert_ok(hold(http, gid="g1", qty=1), 201)
    assert parse_time(held["expires_at"]).year >= datetime.now().year + 99
    assert assert_ok(get_hold(http, "g1"), 200)["status"] == "held"
    assert assert_ok(invoice(http, "g1"), 201)["status"] == "invoiced"
    assert_ok(hold(http, gid="g2", qty=1), 201)
    assert assert_ok(release(http, "g2"), 200)["status"] == "released"


@pytest.fixture
def short(make_service: Callable[..., HoldService]) -> HoldService:
    """A service on the test's Redis whose holds live TTL seconds."""
    return make_service(hold_ttl=TTL)


@pytest.fixture
def short_http(short: HoldService) -> FlaskClient:
    return app_for(short)


@pytest.fixture
def short_stock(short: HoldService) -> RedisInventoryAdapter:
    adapter = short.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    adapter.set_quantity("L1", 2)
    return adapter


def lapse() -> None:
    time.sleep(TTL + 0.1)


def test_invoice_of_lapsed_hold_whose_tickets_were_taken_is_hold_expired(
    make_service, short_http, short_stock
):
    assert_ok(hold(short_http, "g1", qty=2), 201)
    lapse()
    # The hold that takes the tickets lives long: one of TTL lapsed before the invoice on a
    # busy machine, and gave the tickets back for g1's invoice to sell.
    long_lived = app_for(make_service())
    assert_ok(hold(long_lived, "g2", qty=2), 201)
    assert_problem(invoice(short_http, "g1"), 410, "hold_expired")
    stock = short_stock.stock("L1")
    assert (stock.on_hand, stock.held, stock.sold) == (2, 2, 0)
    assert assert_ok(get_hold(short_http, "g1"), 200)["status"] == "expired"
    assert assert_ok(get_hold(short_http, "g2"), 200)["status"] == "held"


def test_invoice_of_lapsed_hold_whose_tickets_are_still_there_succeeds(short_http, short_stock):
    assert_ok(hold(short_http, qty=2), 201)
    lapse()
    assert assert_ok(get_hold(short_http), 200)["status"] == "expired"
    body = assert_ok(invoice(short_http), 201)
    assert body["status"] == "invoiced"
    assert body["tevo_order_id"] == 7
    stock = short_stock.stock("L1")
    assert (stock.on_hand, stock.held, stock.sold) == (0, 0, 2)


def test_release_of_lapsed_hold_answers_200_status_expired(short_http, short_stock):
    assert_ok(hold(short_http, qty=2), 201)
    lapse()
    body = assert_ok(release(short_http), 200)
    assert body["status"] == "expired"
    assert short_stock.stock("L1").available == 2


# -- 413 / 415 ---------------------------------------------------------------------------------


def test_body_over_64_kib_is_payload_too_large(http, stocked):
    raw = json.dumps({"remote_id": "L1", "quantity": 2, "global_id": "g1", "pad": "x" * 65536})
    before = stocked.stock("L1")
    assert_problem(post_raw(http, "/v1/holds", raw), 413, "payload_too_large")
    assert stocked.stock("L1") == before
    assert_no_hold(http)


def test_body_one_byte_over_64_kib_is_payload_too_large(http, stocked):
    base = {"remote_id": "L1", "quantity": 1, "global_id": "g1", "pad": ""}
    pad = 65537 - len(json.dumps(base).encode())
    raw = json.dumps({**base, "pad": "x" * pad})
    assert len(raw.encode()) == 65537
    assert_problem(post_raw(http, "/v1/holds", raw), 413, "payload_too_large")
    assert_no_hold(http)


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"remote_id": "L1", "quantity": 2, "global_id": "g1", "pad": "x" * 70000}),
        json.dumps({"remote_id": "L1", "quantity": 2, "global_id": "g1"}) + " " * 70000,
    ],
    ids=["long-field", "trailing-spaces"],
)
def test_chunked_body_over_64_kib_is_payload_too_large(http, stocked, raw):
    # No Content-Length: the WSGI server (gunicorn sets wsgi.input_terminated) ends the stream.
    before = stocked.stock("L1")
    resp = http.post(
        "/v1/holds",
        input_stream=io.BytesIO(raw.encode()),
        content_type="application/json",
        headers={**AUTH, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_problem(resp, 413, "payload_too_large")
    assert stocked.stock("L1") == before
    assert_no_hold(http)


def test_chunked_body_under_64_kib_is_accepted(http, stocked):
    raw = json.dumps({"remote_id": "L1", "quantity": 2, "global_id": "g1"})
    resp = http.post(
        "/v1/holds",
        input_stream=io.BytesIO(raw.encode()),
        content_type="application/json",
        headers={**AUTH, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_ok(resp, 201)


@pytest.mark.parametrize(
    ("raw", "said"),
    [(b"ZZ\r\n{}\r\n0\r\n\r\n", "Invalid chunk header"), (b"-5\r\n", "Negative chunk length")],
    ids=["chunk-size", "negative-size"],
)
def test_malformed_chunked_body_under_werkzeug_is_invalid_request(http, stocked, raw, said):
    """werkzeug's own server de-chunks with DechunkedInput (gunicorn's case: test_server.py)."""
    problem = assert_problem(
        http.post(
            "/v1/holds",
            content_type="application/json",
            headers={**AUTH, "Transfer-Encoding": "chunked"},
            environ_overrides={
                "wsgi.input": DechunkedInput(io.BytesIO(raw)),
                "wsgi.input_terminated": True,
            },
        ),
        400,
        "invalid_request",
    )
    assert problem["detail"].startswith("The body could not be read: ")
    assert said in problem["detail"]
    assert_no_hold(http)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
    ids=["text", "form", "multipart", "none"],
)
def test_body_not_declared_json_is_unsupported_media_type(http, stocked, content_type):
    raw = json.dumps({"remote_id": "L1", "quantity": 2, "global_id": "g1"})
    before = stocked.stock("L1")
    resp = post_raw(http, "/v1/holds", raw, content_type)
    assert_problem(resp, 415, "unsupported_media_type")
    assert stocked.stock("L1") == before
    assert_no_hold(http)


def test_form_fields_are_unsupported_media_type(http, stocked):
    form = {"remote_id": "L1", "quantity": "2", "global_id": "g1"}
    resp = http.post("/v1/holds", data=form, headers=AUTH)
    assert_problem(resp, 415, "unsupported_media_type")
    assert_no_hold(http)


# -- failures of the POS and of Redis ----------------------------------------------------------


class StubPos(PosAdapter):
    """A POS whose listed methods raise ``exc``; the others succeed and do nothing."""

    def __init__(
        self, exc: BaseException, methods: tuple[str, ...] = ("hold", "release", "invoice")
    ):
        self.exc = exc
        self.methods = methods

    def _maybe_fail(self, method: str) -> None:
        if method in self.methods:
            raise self.exc

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        self._maybe_fail("hold")

    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        self._maybe_fail("release")

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        self._maybe_fail("invoice")


def stub_http(client: RedisClient, exc: BaseException, *methods: str) -> FlaskClient:
    stub = StubPos(exc, methods) if methods else StubPos(exc)
    return app_for(HoldService(Ledger(client), stub))


SECRET = "secret-internal-detail-42"


def test_unexpected_adapter_error_is_internal_error_without_trace(client):
    http = stub_http(client, RuntimeError(SECRET))
    resp = hold(http)
    assert_problem(resp, 500, "internal_error")
    text = resp.get_data(as_text=True)
    assert SECRET not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert 'File "' not in text
    # the POS call's outcome is unknown: the hold stays pending until compensated
    got = assert_ok(get_hold(http), 200)
    assert got["status"] == "pending"
    assert got["events"][-1]["event"] == "hold_outcome_unknown"


def test_unexpected_adapter_error_on_invoice_is_kept_as_a_failed_invoice(client):
    http = stub_http(client, RuntimeError(SECRET), "invoice")
    assert_ok(hold(http), 201)
    resp = invoice(http)
    assert_problem(resp, 500, "internal_error")
    assert SECRET not in resp.get_data(as_text=True)
    assert assert_ok(get_hold(http), 200)["status"] == "invoice_failed"


#: What an adapter must not raise (PosAdapter's contract): errors whose answers say something
#: else (a 410, a 409, a 429...), and exceptions that would end the process serving the call.
FOREIGN = [
    e.InvalidRequest("bad"),
    e.HoldNotFound("no such hold in the POS"),
    e.OrderIdConflict("another order"),
    e.RequestInProgress("the adapter called back into the service"),
    e.RateLimited("slow down", retry_after=30),
    e.ConfigurationError("misconfigured"),
    SystemExit(3),
    GeneratorExit(),
]
FOREIGN_ON_HOLD = pytest.mark.parametrize(
    "exc", [*FOREIGN, e.HoldExpired("lapsed in the POS")], ids=lambda exc: type(exc).__name__
)


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
@FOREIGN_ON_HOLD
def test_an_adapter_error_outside_its_contract_on_hold_is_internal_error(client, exc):
    """Such an error reached TEvo with its own status (410 hold_expired, 429 rate_limited...)
    while the hold was compensated; a SystemExit ended the process. It is an unexpected error:
    500, and the hold is released in the POS by the worker (the outcome is unknown)."""
    http = stub_http(client, exc, "hold")
    assert_problem(hold(http), 500, "internal_error")
    got = assert_ok(get_hold(http), 200)
    assert got["status"] == "pending"
    assert got["events"][-1]["event"] == "hold_outcome_unknown"


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
@pytest.mark.parametrize(
    "exc", [*FOREIGN, e.GlobalIdConflict("another hold")], ids=lambda exc: type(exc).__name__
)
def test_an_adapter_error_outside_its_contract_on_invoice_is_internal_error_and_retried(
    client, exc
):
    """TEvo got 400, 404, 409, 429 or a configuration_error for an invoice kept and retried
    (and sold by the worker later). It is an unexpected error: 500, the invoice is kept, the
    worker sells it once the POS takes it."""
    stub = StubPos(exc, ("invoice",))
    service = HoldService(Ledger(client), stub, retry_base=0.001)
    http = app_for(service)
    assert_ok(hold(http), 201)
    assert_problem(invoice(http), 500, "internal_error")
    got = assert_ok(get_hold(http), 200)
    assert got["status"] == "invoice_failed"
    assert got["last_error"].startswith("internal_error")
    stub.methods = ()  # the POS takes it now
    time.sleep(0.01)  # past the retry's backoff
    assert Worker(service, lease=5).run_once() == 1
    assert assert_ok(get_hold(http), 200)["status"] == "invoiced"


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
@pytest.mark.parametrize("exc", FOREIGN, ids=lambda exc: type(exc).__name__)
def test_an_adapter_error_outside_its_contract_on_release_is_internal_error(client, exc):
    http = stub_http(client, exc, "release")
    assert_ok(hold(http), 201)
    assert_problem(release(http), 500, "internal_error")
    assert assert_ok(get_hold(http), 200)["status"] == "released"


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
@pytest.mark.parametrize("lapsed", [False, True], ids=["live", "lapsed"])
def test_an_adapter_saying_hold_expired_on_invoice_is_taken_as_tickets_gone(client, lapsed):
    """An adapter's HoldExpired on an invoice reached TEvo as 410 hold_expired, while the ledger
    kept the invoice failed and the worker later sold it: TEvo told no sale, a sale made. It
    means what InsufficientQuantity does (the hold's tickets are gone in the POS): 410 only on
    the first invoice of a hold that lapsed, given back lapsed and never sold; else 502, the
    invoice kept and retried (the buyer has paid)."""
    stub = StubPos(e.HoldExpired("The hold lapsed in the POS."), ("invoice",))
    service = HoldService(Ledger(client), stub, hold_ttl=0.05 if lapsed else 60, retry_base=0.001)
    http = app_for(service)
    assert_ok(hold(http), 201)
    if lapsed:
        time.sleep(0.1)
        assert_problem(invoice(http), 410, "hold_expired")
        assert assert_ok(get_hold(http), 200)["status"] == "expired"
        assert list(service.ledger.scheduled("i")) == []
    else:
        assert_problem(invoice(http), 502, "pos_error")
        got = assert_ok(get_hold(http), 200)
        assert got["status"] == "invoice_failed"
        assert got["last_error"] == "hold_expired: The hold lapsed in the POS."
        assert list(service.ledger.scheduled("i")) != []


@contextmanager
def sigint_handler(handler: Any) -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), KeyboardInterrupt()], ids=repr)
def test_a_worker_survives_an_adapter_that_raises_what_would_end_it(client, exc):
    """Worker.run promises that one bad item never ends the work: an adapter's SystemExit ended
    `tevo-hold worker` (rc 3), and the item, due again, ended the next one. The retry is
    recorded as failed and rescheduled. (A KeyboardInterrupt here, where the worker's own
    SIGINT handler is installed as `tevo-hold worker` installs it, is no Ctrl-C either.)"""
    stub = StubPos(e.PosError("down"), ("invoice",))
    service = HoldService(Ledger(client), stub, retry_base=0.001)
    service.hold(remote_id="L1", quantity=2, global_id="g1")
    with pytest.raises(e.PosError):
        service.invoice(global_id="g1", tevo_order_id=7)
    stub.exc = exc
    with sigint_handler(lambda *_: None):
        for attempt in (2, 3):
            time.sleep(0.01)  # past the retry's backoff
            assert Worker(service, lease=5).run_once() == 1
            failed = service.get(global_id="g1")
            assert (failed.status, failed.invoice_attempts) == (HoldStatus.INVOICE_FAILED, attempt)
            assert failed.last_error is not None
            assert failed.last_error.startswith("internal_error")


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
def test_a_keyboard_interrupt_off_the_main_thread_is_an_adapter_error(client):
    """Python raises KeyboardInterrupt for SIGINT in the main thread only: in a request thread
    (gunicorn's, Flask's), one is the adapter's, and answers 500 like any other."""
    http = stub_http(client, KeyboardInterrupt(), "invoice")
    assert_ok(hold(http), 201)
    with ThreadPoolExecutor(1) as pool:
        resp = pool.submit(invoice, http).result()
    assert_problem(resp, 500, "internal_error")
    assert assert_ok(get_hold(http), 200)["status"] == "invoice_failed"


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
def test_a_keyboard_interrupt_that_may_be_ctrl_c_stops_the_program_once_recorded(client):
    """In the main thread with Python's own SIGINT handler (a script, a CLI command), the user
    may have pressed Ctrl-C during the POS call: the interrupt goes on, after the call's outcome
    was recorded as unknown (the hold released later, the invoice kept and retried)."""
    stub = StubPos(KeyboardInterrupt())
    service = HoldService(Ledger(client), stub, retry_base=0.001)
    with sigint_handler(signal.default_int_handler):
        with pytest.raises(KeyboardInterrupt):
            service.hold(remote_id="L1", quantity=2, global_id="held")
        assert service.get(global_id="held").status is HoldStatus.PENDING
        stub.methods = ("invoice",)
        service.hold(remote_id="L1", quantity=2, global_id="sold")
        with pytest.raises(KeyboardInterrupt):
            service.invoice(global_id="sold", tevo_order_id=7)
        assert service.get(global_id="sold").status is HoldStatus.INVOICE_FAILED
        time.sleep(0.01)  # past the retry's backoff
        with pytest.raises(KeyboardInterrupt):  # and a worker run from the shell stops
            Worker(service, lease=5).run_once()
    assert service.get(global_id="sold").invoice_attempts == 2


def test_a_pos_that_knows_no_such_listing_on_invoice_answers_502_and_keeps_it(client):
    """The invoice is kept (invoice_failed) and retried: TEvo was told 404 listing_not_found,
    which its contract reads as "the listing is gone, do not retry"; it is a failed sale, 502."""
    http = stub_http(client, e.ListingNotFound("POS: no such listing"), "invoice")
    assert_ok(hold(http), 201)
    resp = invoice(http)
    assert_problem(resp, 502, "pos_error")
    assert "listing_not_found" in resp.get_json()["detail"]
    assert assert_ok(get_hold(http), 200)["status"] == "invoice_failed"


POS_FAILURES = pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (e.PosError("pos said no"), 502, "pos_error"),
        (e.Unavailable("pos unreachable"), 503, "unavailable"),
        (e.PosTimeout("pos too slow"), 504, "pos_timeout"),
    ],
    ids=["pos_error", "unavailable", "pos_timeout"],
)


@POS_FAILURES
def test_pos_failure_on_hold_answers_its_status(client, exc, status, code):
    http = stub_http(client, exc)
    resp = hold(http)
    assert_problem(resp, status, code)
    if status == 503:
        assert int(resp.headers["Retry-After"]) >= 1
    if code == "pos_timeout":  # unknown outcome: pending until compensated or retried
        assert assert_ok(get_hold(http), 200)["status"] == "pending"
    else:  # refused: nothing is held, a retry starts afresh
        assert_no_hold(http)


@POS_FAILURES
def test_pos_failure_on_invoice_answers_its_status_and_keeps_a_failed_invoice(
    client, exc, status, code
):
    http = stub_http(client, exc, "invoice")
    assert_ok(hold(http), 201)
    resp = invoice(http)
    assert_problem(resp, status, code)
    got = assert_ok(get_hold(http), 200)
    assert got["status"] == "invoice_failed" and got["tevo_order_id"] == 7
    assert got["last_error"].startswith(code) and got["invoice_attempts"] == 1
    assert got["events"][-1]["event"] == "invoice_failed"
    # it can no longer be released; a retry of the same invoice tries the POS again
    assert_problem(release(http), 409, "hold_already_invoiced")
    assert_problem(invoice(http), status, code)
    assert assert_ok(get_hold(http), 200)["invoice_attempts"] == 2


@POS_FAILURES
def test_pos_failure_on_release_answers_its_status(client, exc, status, code):
    http = stub_http(client, exc, "release")
    assert_ok(hold(http), 201)
    assert_problem(release(http), status, code)


@pytest.mark.parametrize(
    "exc",
    [
        e.InsufficientQuantity("POS: 0 tickets", available=0),
        e.ListingNotFound("POS: no such listing"),
        e.GlobalIdConflict("POS: another hold"),
    ],
    ids=lambda exc: exc.code,
)
def test_a_pos_refusing_a_release_otherwise_answers_502_and_the_release_stands(client, exc):
    """The release's documented answer for a POS that failed to take the tickets back is 502;
    a refusal whose code means something else for a hold (a 409 insufficient_quantity, say)
    must not reach TEvo as that code, after the hold was released here."""
    http = stub_http(client, exc, "release")
    assert_ok(hold(http), 201)
    resp = release(http)
    assert_problem(resp, 502, "pos_error")
    assert exc.code in resp.get_json()["detail"]
    assert assert_ok(get_hold(http), 200)["status"] == "released"


@pytest.mark.parametrize(
    ("given", "answered"),
    [(3, 3), (0, 0), (-3, 0), (True, None), (2.5, None), ("2", None), (None, None)],
)
def test_a_pos_count_reaches_tevo_as_the_schema_has_it(client, given, answered):
    """An adapter may pass on the count its POS sent (the HTTP adapter does); the problem
    document keeps to its schema all the same: ``available`` an integer, 0 or more, or absent."""
    http = stub_http(client, e.InsufficientQuantity("POS: not enough", available=given), "hold")
    body = assert_problem(hold(http), 409, "insufficient_quantity")
    if answered is None:
        assert "available" not in body
    else:
        assert body["available"] == answered and type(body["available"]) is int


@pytest.fixture
def redis_down_http() -> Iterator[FlaskClient]:
    """An app whose Redis is a closed loopback port."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_keys=("k",))
    down = connect(settings)
    try:
        yield app_for(build_service(settings, client=down))
    finally:
        down.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda http: hold(http),
        lambda http: release(http),
        lambda http: invoice(http),
        lambda http: get_hold(http),
    ],
    ids=["hold", "release", "invoice", "get"],
)
def test_redis_down_is_unavailable_quickly_with_retry_after(redis_down_http, call, monkeypatch):
    """Quickly: the request stops after its first failed call to Redis, of two connection
    attempts (RETRIES + 1), not redis-py's default retries with seconds of backoff. Counted,
    not timed: a wall-clock bound (2 s) failed on a loaded machine."""
    import redis.connection

    from tevo_hold.connection import RETRIES

    attempts: list[int] = []
    connect_once = redis.connection.Connection._connect

    def counted(self: redis.connection.Connection) -> Any:
        attempts.append(1)
        return connect_once(self)

    monkeypatch.setattr(redis.connection.Connection, "_connect", counted)
    started = time.monotonic()
    resp = call(redis_down_http)
    elapsed = time.monotonic() - started
    assert_problem(resp, 503, "unavailable")
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(attempts) == RETRIES + 1
    assert elapsed < 30, f"503 took {elapsed:.2f}s"  # only a hang: the count is the check


def test_a_key_of_no_managed_keys_shape_is_refused_with_redis_down_at_once(redis_down_http):
    """``X-API-Key: th_...`` was looked up in Redis before it was refused: with Redis away,
    anyone without a key held a thread for the lookup's timeouts and got a 503, not a 401."""
    for key in ("th_guess", "th_" + "x" * 44):
        started = time.monotonic()
        resp = redis_down_http.get("/v1/holds/g1", headers={"X-API-Key": key})
        assert_problem(resp, 401, "unauthorized")
        assert time.monotonic() - started < 0.2
    shaped = redis_down_http.get("/v1/holds/g1", headers={"X-API-Key": "th_" + "x" * 43})
    assert_problem(shaped, 503, "unavailable")  # a managed key's shape: looked up, as before


def test_healthz_answers_without_redis(redis_down_http):
    assert_ok(redis_down_http.get("/healthz"), 200)


# -- ids are data ------------------------------------------------------------------------------

TRICKY_IDS = [
    "a",
    "a}b",
    "a%7Db",
    "a{b",
    "a%7Bb",
    "{a}",
    "%7Ba%7D",
    "a:b",
    "a*",
    "*",
    "a b",
    " a",
    "a%25",
    "a%",
    "äöü",
    "日本",
    "a/b",
]


def test_tricky_global_ids_are_distinct_holds(http, inventory):
    inventory.set_quantity("L1", 1000)
    for n, gid in enumerate(TRICKY_IDS, start=1):
        body = assert_ok(hold(http, gid=gid, qty=n), 201)
        assert body["global_id"] == gid and body["quantity"] == n
    assert inventory.stock("L1").held == sum(range(1, len(TRICKY_IDS) + 1))
    for n, gid in enumerate(TRICKY_IDS, start=1):
        body = assert_ok(get_hold(http, gid), 200)
        assert (body["global_id"], body["quantity"]) == (gid, n)


def test_tricky_global_ids_release_and_invoice_only_their_own_hold(http, inventory):
    inventory.set_quantity("L1", 10)
    for gid in ("a}b", "a%7Db", "a"):
        assert_ok(hold(http, gid=gid, qty=1), 201)
    assert assert_ok(release(http, "a%7Db"), 200)["global_id"] == "a%7Db"
    assert assert_ok(invoice(http, "a}b"), 201)["global_id"] == "a}b"
    statuses = {gid: assert_ok(get_hold(http, gid), 200)["status"] for gid in ("a}b", "a%7Db", "a")}
    assert statuses == {"a}b": "invoiced", "a%7Db": "released", "a": "held"}
    stock = inventory.stock("L1")
    assert (stock.on_hand, stock.held, stock.sold) == (9, 1, 1)


def test_tricky_remote_ids_are_distinct_listings(http, inventory):
    for n, rid in enumerate(TRICKY_IDS, start=1):
        inventory.set_quantity(rid, n)
    for n, rid in enumerate(TRICKY_IDS, start=1):
        body = assert_ok(hold(http, gid=f"g-{n}", rid=rid, qty=n), 201)
        assert body["remote_id"] == rid
    for n, rid in enumerate(TRICKY_IDS, start=1):
        stock = inventory.stock(rid)
        assert (stock.on_hand, stock.held, stock.available) == (n, n, 0)
        assert assert_ok(get_hold(http, f"g-{n}"), 200)["remote_id"] == rid


def test_global_id_equal_to_a_remote_id_does_not_collide(http, inventory):
    inventory.set_quantity("x", 3)
    inventory.set_quantity("y", 3)
    assert_ok(hold(http, gid="x", rid="y", qty=1), 201)
    assert_ok(hold(http, gid="y", rid="x", qty=2), 201)
    assert inventory.stock("y").held == 1
    assert inventory.stock("x").held == 2


@pytest.mark.parametrize("gid", ["/x", "a//b", "x/", "//", "/"])
def test_global_ids_with_slashes_anywhere_are_read_back(http, stocked, gid):
    """A global_id starting or ending with '/', or with '//', is data like any other: the path
    is neither merged nor redirected (gunicorn hands %2F over decoded)."""
    assert_ok(hold(http, gid=gid, qty=1), 201)
    got = assert_ok(get_hold(http, gid), 200)
    assert got["global_id"] == gid


@pytest.mark.parametrize(
    "gid",
    ["a\nb", "\n", "x\n", "\r\n", "a\rb", "/\n", "\n/\n", "a\tb", "\x00", "\x0b\x0c", "\x85\u2028"],
    ids=repr,
)
def test_global_ids_with_line_breaks_and_control_characters_are_read_back(http, inventory, gid):
    """Ids are data, whatever characters they hold: a hold made with "a\nb" is read back at
    /v1/holds/a%0Ab (the path's id once matched up to the first newline only, a 404)."""
    inventory.set_quantity("L1", 5)
    assert_ok(hold(http, gid=gid, qty=1), 201)
    got = assert_ok(get_hold(http, gid), 200)
    assert got["global_id"] == gid


def get_raw_path(http: FlaskClient, raw: bytes, prefix: str = "/v1/holds/") -> TestResponse:
    """GET of a path whose id is ``raw``, the bytes a client percent-encoded (``%FF`` is 0xFF),
    handed over as a WSGI server does (latin-1 text): werkzeug's test client would replace them.
    """
    path = prefix + raw.decode("latin-1")
    return http.get("/v1/holds/x", headers=AUTH, environ_overrides={"PATH_INFO": path})


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"a\xc3", b"\xef\xbf\xbd\xff"], ids=repr)
def test_get_of_an_id_that_is_not_utf8_is_invalid_request(http, inventory, raw):
    """werkzeug decodes the path replacing bytes that are not UTF-8 with U+FFFD: %FF%FE read as
    the hold "\ufffd\ufffd". An id is never read as another one: it is refused."""
    inventory.set_quantity("L1", 5)
    replaced = raw.decode("utf-8", "replace")
    assert_ok(hold(http, gid=replaced, qty=1), 201)
    problem = assert_problem(get_raw_path(http, raw), 400, "invalid_request")
    assert problem["errors"] == {
        "global_id": ["must be valid UTF-8 (percent-encode its UTF-8 bytes)"]
    }
    # the hold whose id really is made of U+FFFD is read with its own bytes
    assert assert_ok(get_raw_path(http, replaced.encode()), 200)["global_id"] == replaced


def test_get_of_a_lone_surrogate_is_refused_as_in_a_body(http, stocked):
    """A lone surrogate, UTF-8-encoded as some encoders do (%ED%A0%80), is refused in the path
    with the same code and field error as the same surrogate in a body ("\\ud800")."""
    in_body = post_raw(http, "/v1/releases", '{"global_id": "\\ud800"}')
    in_path = get_raw_path(http, "\ud800".encode("utf-8", "surrogatepass"))
    errors = {"global_id": ["must be valid Unicode (no lone surrogates)"]}
    assert assert_problem(in_body, 400, "invalid_request")["errors"] == errors
    assert assert_problem(in_path, 400, "invalid_request")["errors"] == errors


def test_an_id_that_is_not_utf8_is_refused_under_a_prefix_too(service, stocked):
    """Under a prefix of the vendor's (not ASCII, even), the id is what follows it."""
    app = Flask("vendor")
    settings = Settings(redis_url="redis://unused", api_keys=(API_KEY,))
    TevoHold(app, service=service, settings=settings, url_prefix="/tévo")
    http = app.test_client()
    assert_ok(
        http.post(
            "/tévo/v1/holds",
            json={"remote_id": "L1", "quantity": 1, "global_id": "é"},
            headers=AUTH,
        ),
        201,
    )
    prefix = "/tévo/v1/holds/".encode().decode("latin-1")
    assert_problem(get_raw_path(http, b"\xff", prefix=prefix), 400, "invalid_request")
    assert assert_ok(get_raw_path(http, "é".encode(), prefix=prefix), 200)["global_id"] == "é"


def test_answers_are_the_json_modules_compact_utf8_even_where_orjson_refuses():
    from tevo_hold.web import _encode_json

    def as_json_module(body):
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    for body in (
        {"global_id": "g-1", "quantity": 2, "status": "held", "tevo_order_id": 2**63 - 1},
        {"detail": 'quote " slash / back \\ newline \n tab \t nul \x00 ünï 🎟', "x": None},
        {"nested": [1, 2.5, True, False, {"a": []}], "checks": {"redis": "ok"}},
        {"past 64 bits": 2**70, "negative": -(2**70)},  # orjson refuses these: json writes them
        {1: "a key that is not a string"},
    ):
        assert json.loads(_encode_json(body)) == json.loads(as_json_module(body))
    assert _encode_json({"a": 1, "b": "ü"}) == as_json_module({"a": 1, "b": "ü"})
