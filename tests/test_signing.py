"""Request signing (TEVO_HOLD_REQUIRE_SIGNATURE), with signatures computed here, independently.

The signature is TEvo's: base64 of HMAC-SHA256, keyed with the API key, of
``METHOD host path?`` followed by the body, or by the query string when there is no body (a
GET's body is never read).
This file computes it with nothing but the standard library, from the README's definition.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import DechunkedInput
from werkzeug.test import TestResponse

from tevo_hold import HoldService, create_app
from tevo_hold.auth import KeyStore, sign

from .conftest import API_KEY

HOST = "pos.example.com"


def signature(key: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


@pytest.fixture
def http(service: HoldService) -> FlaskClient:
    service.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    config = {"TEVO_HOLD_API_KEYS": API_KEY, "TEVO_HOLD_REQUIRE_SIGNATURE": "1", "TESTING": True}
    return create_app(config, service=service).test_client()


def post(
    http: FlaskClient,
    path: str,
    body: bytes,
    *,
    key: str = API_KEY,
    sig: str | None = None,
    host: str = HOST + ":8443",
) -> TestResponse:
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    if sig is not None:
        headers["X-Signature"] = sig
    return http.post(path, data=body, headers=headers, base_url=f"https://{host}")


def hold_body(gid: str = "g1") -> bytes:
    # Sent as these exact bytes: the signature covers the body as sent, not a re-encoding.
    return json.dumps({"remote_id": "L1", "quantity": 1, "global_id": gid}).encode()


def assert_invalid_signature(resp: TestResponse) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    assert resp.json is not None and resp.json["code"] == "invalid_signature"
    assert "WWW-Authenticate" in resp.headers


def held(service: HoldService) -> int:
    return service.adapter.stock("L1").held  # type: ignore[attr-defined, no-any-return]


def test_a_signed_hold_is_made(http: FlaskClient, service: HoldService) -> None:
    body = hold_body()
    sig = signature(API_KEY, b"POST pos.example.com/v1/holds?" + body)
    resp = post(http, "/v1/holds", body, sig=sig)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert held(service) == 1


def test_the_library_signs_as_the_definition_says() -> None:
    body = hold_body()
    expected = signature("k", b"POST pos.example.com/v1/holds?" + body)
    assert sign("k", "post", "POS.example.com:8443", "/v1/holds", "", body) == expected
    assert sign("k", "GET", "[::1]:80", "/v1/holds/g", "a=1") == signature(
        "k", b"GET [::1]/v1/holds/g?a=1"
    )


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"POST pos.example.com/v1/holds?" + hold_body("other"), id="other-body"),
        pytest.param(b"POST pos.example.com/v1/releases?" + hold_body(), id="other-path"),
        pytest.param(b"PUT pos.example.com/v1/holds?" + hold_body(), id="other-method"),
        pytest.param(b"POST evil.example.com/v1/holds?" + hold_body(), id="other-host"),
        pytest.param(b"POST pos.example.com:8443/v1/holds?" + hold_body(), id="port-kept"),
        pytest.param(b"POST pos.example.com/v1/holds" + hold_body(), id="no-question-mark"),
        pytest.param(b"POST pos.example.com/v1/holds?", id="body-left-out"),
    ],
)
def test_a_signature_of_anything_else_is_refused_and_changes_nothing(
    http: FlaskClient, service: HoldService, message: bytes
) -> None:
    assert_invalid_signature(post(http, "/v1/holds", hold_body(), sig=signature(API_KEY, message)))
    assert held(service) == 0


def test_a_signature_under_another_key_is_refused(http: FlaskClient, service: HoldService) -> None:
    body = hold_body()
    sig = signature("not-the-key", b"POST pos.example.com/v1/holds?" + body)
    assert_invalid_signature(post(http, "/v1/holds", body, sig=sig))
    assert held(service) == 0


@pytest.mark.parametrize("sig", [None, "", "not base64 at all"])
def test_a_missing_or_garbled_signature_is_refused(
    http: FlaskClient, service: HoldService, sig: str | None
) -> None:
    assert_invalid_signature(post(http, "/v1/holds", hold_body(), sig=sig))
    assert held(service) == 0


def test_a_bad_key_is_unauthorized_before_its_signature_is_looked_at(http: FlaskClient) -> None:
    body = hold_body()
    sig = signature("wrong", b"POST pos.example.com/v1/holds?" + body)
    resp = post(http, "/v1/holds", body, key="wrong", sig=sig)
    assert resp.status_code == 401 and resp.json is not None
    assert resp.json["code"] == "unauthorized"


def test_get_signs_the_path_as_sent_and_the_query(http: FlaskClient) -> None:
    body = hold_body("a/b")
    made = post(
        http, "/v1/holds", body, sig=signature(API_KEY, b"POST pos.example.com/v1/holds?" + body)
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    path = "/v1/holds/a%2Fb"

    def get(sig: str, query: str = "") -> TestResponse:
        url = path + ("?" + query if query else "")
        headers = {"X-API-Key": API_KEY, "X-Signature": sig}
        return http.get(url, headers=headers, base_url=f"https://{HOST}")

    ok = get(signature(API_KEY, b"GET pos.example.com/v1/holds/a%2Fb?"))
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert ok.json is not None and ok.json["global_id"] == "a/b"
    with_query = get(signature(API_KEY, b"GET pos.example.com/v1/holds/a%2Fb?x=1&y=2"), "x=1&y=2")
    assert with_query.status_code == 200
    assert_invalid_signature(get(signature(API_KEY, b"GET pos.example.com/v1/holds/a/b?")))
    assert_invalid_signature(get(signature(API_KEY, b"GET pos.example.com/v1/holds/a%2Fb?"), "x=1"))


def test_a_get_never_reads_a_body_and_signs_its_query(http: FlaskClient) -> None:
    """A GET's body has no meaning (the API never reads one, signing or not): a GET signs its
    query string, and answers as documented for getHold, never 413 for an oversized body or 400
    for a malformed chunked one (which it did once signing read every body)."""
    made = post(
        http,
        "/v1/holds",
        hold_body(),
        sig=signature(API_KEY, b"POST pos.example.com/v1/holds?" + hold_body()),
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    signed = signature(API_KEY, b"GET pos.example.com/v1/holds/g1?")
    headers = {"X-API-Key": API_KEY, "X-Signature": signed}
    base = f"https://{HOST}"
    oversized = http.get("/v1/holds/g1", data=b"x" * 70000, headers=headers, base_url=base)
    assert oversized.status_code == 200, oversized.get_data(as_text=True)
    chunked = http.get(  # as werkzeug's own server de-chunks it
        "/v1/holds/g1",
        headers={**headers, "Transfer-Encoding": "chunked"},
        base_url=base,
        environ_overrides={
            "wsgi.input": DechunkedInput(io.BytesIO(b"ZZ\r\n{}\r\n0\r\n\r\n")),
            "wsgi.input_terminated": True,
        },
    )
    assert chunked.status_code == 200, chunked.get_data(as_text=True)
    body_signed = signature(API_KEY, b"GET pos.example.com/v1/holds/g1?" + b"x" * 10)
    headers = {"X-API-Key": API_KEY, "X-Signature": body_signed}
    assert_invalid_signature(
        http.get("/v1/holds/g1", data=b"x" * 10, headers=headers, base_url=base)
    )


def test_managed_keys_sign_with_themselves(
    http: FlaskClient, service: HoldService, client: Any
) -> None:
    _, plaintext = KeyStore(client).create("tevo")
    body = hold_body()
    sig = signature(plaintext, b"POST pos.example.com/v1/holds?" + body)
    assert post(http, "/v1/holds", body, key=plaintext, sig=sig).status_code == 201
    wrong = ("y" if sig[0] == "x" else "x") + sig[1:]  # one character off, whatever the key
    assert_invalid_signature(post(http, "/v1/holds", body, key=plaintext, sig=wrong))


def test_public_endpoints_need_no_signature(http: FlaskClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(path).status_code == 200, path


def test_signing_is_off_by_default_and_x_signature_then_ignored(service: HoldService) -> None:
    service.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    http = create_app({"TEVO_HOLD_API_KEYS": API_KEY, "TESTING": True}, service=service)
    resp = post(http.test_client(), "/v1/holds", hold_body(), sig="whatever")
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_behind_a_trusted_proxy_the_host_signed_is_still_the_one_sent(
    service: HoldService,
) -> None:
    """TEVO_HOLD_PROXY_HOPS trusts X-Forwarded-For and -Proto only: a Host taken from
    X-Forwarded-Host (or a path from X-Forwarded-Prefix) would be signed as the proxy's
    client says, not as the request came."""
    service.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    config = {
        "TEVO_HOLD_API_KEYS": API_KEY,
        "TEVO_HOLD_REQUIRE_SIGNATURE": "1",
        "TEVO_HOLD_PROXY_HOPS": "1",
        "TESTING": True,
    }
    http = create_app(config, service=service).test_client()
    forwarded = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Prefix": "/elsewhere",
    }
    body = hold_body()
    sig = signature(API_KEY, b"POST pos.example.com/v1/holds?" + body)
    headers = {"X-API-Key": API_KEY, "X-Signature": sig, **forwarded}
    resp = http.post(
        "/v1/holds",
        data=body,
        headers=headers,
        content_type="application/json",
        base_url=f"http://{HOST}:8443",
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    forged = signature(API_KEY, b"POST evil.example/elsewhere/v1/holds?" + hold_body("g2"))
    resp = http.post(
        "/v1/holds",
        data=hold_body("g2"),
        headers={**headers, "X-Signature": forged},
        content_type="application/json",
        base_url=f"http://{HOST}:8443",
    )
    assert_invalid_signature(resp)


def get_signed(http: FlaskClient, path: str, message: bytes, host: str = HOST) -> TestResponse:
    headers = {"X-API-Key": API_KEY, "X-Signature": signature(API_KEY, message), "Host": host}
    return http.get(path, headers=headers, base_url=f"https://{HOST}")


def test_an_id_holding_a_scheme_is_signed_as_its_path_is_sent(http: FlaskClient) -> None:
    """A path holding "://" (an id may hold any characters) was read as an absolute-form
    target: "/v1/holds/http://evil/v1/holds/g1" signed as "/v1/holds/g1", so a signature of
    one read was taken for the other, and the one signed as documented was refused."""
    gid = "http://evil/v1/holds/g1"
    assert (
        post(
            http,
            "/v1/holds",
            hold_body(gid),
            sig=signature(API_KEY, b"POST " + HOST.encode() + b"/v1/holds?" + hold_body(gid)),
        ).status_code
        == 201
    )
    path = "/v1/holds/" + gid
    assert get_signed(http, path, f"GET {HOST}{path}?".encode()).status_code == 200
    assert_invalid_signature(get_signed(http, path, f"GET {HOST}/v1/holds/g1?".encode()))


def test_a_host_name_werkzeug_finds_odd_is_signed_as_sent(http: FlaskClient) -> None:
    """A host name with an underscore (a compose service's, say): werkzeug reads it as "", and
    only a signature of no host was taken; the documented one, of the name, was refused."""
    path = "/v1/holds/nope"
    answer = get_signed(http, path, f"GET tevo_hold{path}?".encode(), host="tevo_hold:8000")
    assert answer.status_code == 404 and answer.json["code"] == "hold_not_found"
    assert_invalid_signature(get_signed(http, path, f"GET {path}?".encode(), host="tevo_hold"))


@pytest.mark.parametrize("host", [HOST + "/v1", "a b", ""])
def test_a_host_header_that_is_no_host_name_is_refused(http: FlaskClient, host: str) -> None:
    """A "/" in the Host header would move the boundary between host and path in the signed
    string (one signature for two requests): such a Host is refused, whatever is signed."""
    path = "/v1/holds/nope"
    assert_invalid_signature(get_signed(http, path, f"GET {host}{path}?".encode(), host=host))
