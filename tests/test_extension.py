"""The Flask extension inside a vendor's own app, under a prefix of its choosing."""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import secrets
import threading
import time
import tomllib
from pathlib import Path
from typing import ClassVar

import fakeredis
import pytest
from flask import Blueprint, Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.test import TestResponse

from tevo_hold import (
    RedisInventoryAdapter,
    Settings,
    TevoHold,
    build_service,
    create_app,
    create_blueprint,
)
from tevo_hold.adapters.redis_inventory import SAMPLE_INVENTORY
from tevo_hold.auth import env_name
from tevo_hold.errors import ConfigurationError, ListingNotFound
from tevo_hold.web import EXTENSION_KEY

from .pos_double import pos_double
from .recording_pos import RecordingPos
from .servers import ROOT, free_port

KEY = {"X-API-Key": "vendor-key"}


@pytest.fixture
def vendor_app() -> Flask:
    app = Flask("vendor")

    @app.get("/")
    def home() -> str:
        return "<h1>vendor home</h1>"

    return _set_up_tevo_hold(app, url_prefix="/tevo")


def _set_up_tevo_hold(app: Flask, *, url_prefix: str) -> Flask:
    """TevoHold on ``app``, its state on fakeredis (in this process's memory), listing L of 3."""
    settings = Settings(redis_url="redis://unused", api_keys=("vendor-key",))
    service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    service.adapter.set_quantity("L", 3)  # type: ignore[attr-defined]
    ext = TevoHold(service=service, settings=settings, url_prefix=url_prefix)
    ext.init_app(app)
    return app


def test_api_answers_under_the_prefix(vendor_app):
    http = vendor_app.test_client()
    r = http.post(
        "/tevo/v1/holds", json={"remote_id": "L", "quantity": 1, "global_id": "g"}, headers=KEY
    )
    assert r.status_code == 201 and r.json["status"] == "held"
    assert http.get("/tevo/v1/holds/g", headers=KEY).json["global_id"] == "g"
    assert http.get("/tevo/healthz").status_code == 200


def test_errors_under_the_prefix_are_problems_and_the_rest_of_the_app_is_untouched(vendor_app):
    http = vendor_app.test_client()
    missing = http.get("/tevo/v1/nothing", headers=KEY)
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert missing.json["code"] == "not_found"
    wrong = http.put("/tevo/v1/holds", headers=KEY)
    assert wrong.status_code == 405 and wrong.json["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]
    assert http.get("/").data == b"<h1>vendor home</h1>"
    theirs = http.get("/elsewhere")
    assert theirs.status_code == 404 and theirs.mimetype == "text/html"


@pytest.mark.parametrize(
    "path", ["/tevo/v1//holds", "/tevo//v1/holds", "/tevo//healthz", "/tevo/docs//x.css"]
)
def test_a_doubled_slash_under_the_prefix_is_a_not_found_problem_not_a_redirect(vendor_app, path):
    """The vendor's app merges slashes in its own paths as Flask does by default; the API's
    paths are as written, else a 404 problem (werkzeug's 308 redirect was an HTML page)."""
    http = vendor_app.test_client()
    for method in ("GET", "POST"):
        body = {"remote_id": "L", "quantity": 1, "global_id": "g"}
        resp = http.open(path, method=method, json=body, headers=KEY)
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
        assert resp.json["code"] == "not_found" and "Location" not in resp.headers
    assert http.get("/tevo/v1/holds/g", headers=KEY).json["code"] == "hold_not_found"


def test_an_http_error_the_vendors_app_raises_keeps_its_status_with_code_http_error(vendor_app):
    """The one code no operation lists, as the document's description says: the vendor's own."""

    @vendor_app.before_request
    def closed_on_sundays() -> None:
        if request.headers.get("X-Day") == "sunday":
            abort(403)

    http = vendor_app.test_client()
    refused = http.get("/tevo/v1/holds/g", headers={**KEY, "X-Day": "sunday"})
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    assert refused.json["code"] == "http_error"
    assert refused.json["type"] == "urn:tevo-hold:problem:http_error"
    description = http.get("/tevo/v1/openapi.json").json["info"]["description"]
    assert "the code `http_error`" in description


# -- a vendor's hook that reads the body first -----------------------------------------------


def _read_by_the_vendor(how: str) -> None:
    """What a vendor's app-wide before_request does with the body (request logging, an audit
    trail, an HMAC check of its own)."""
    if how == "get_data":
        request.get_data()
    elif how == "get_json":
        request.get_json(silent=True)
    elif how == "form":
        request.form  # noqa: B018  # the attribute reads the body where it is a form
    elif how == "stream":
        request.stream.read()  # an HMAC check streaming the body: nothing cached


def _post_hold_after_a_vendors_hook(
    how: str | None, chunked: bool, hold: dict[str, object]
) -> tuple[Flask, TestResponse]:
    """A hold POSTed to a vendor's app whose hook read the body ``how`` (None: no hook), with a
    Content-Length or chunked (none: the WSGI server ends the stream): the app and its answer."""
    app = Flask("vendor")
    if how is not None:

        @app.before_request
        def audit() -> None:
            _read_by_the_vendor(how)

    _set_up_tevo_hold(app, url_prefix="/tevo")
    body = json.dumps(hold).encode()
    extra = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(body))}
    answer = app.test_client().post(
        "/tevo/v1/holds",
        headers={**KEY, "Content-Type": "application/json", **extra},
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},
    )
    return app, answer


@pytest.mark.parametrize("how", [None, "get_data", "get_json", "form"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_hold_is_read_whether_or_not_a_vendors_hook_read_the_body_first(how, chunked):
    """A hook that read a chunked body (no Content-Length) drained the stream into werkzeug's
    cache: the API read the empty stream and answered a valid hold 400 malformed_json."""
    hold = {"remote_id": "L", "quantity": 1, "global_id": "g"}
    _, resp = _post_hold_after_a_vendors_hook(how, chunked, hold)
    assert resp.status_code == 201, resp.json
    assert resp.json["global_id"] == "g"


def test_a_body_a_vendors_hook_read_from_the_stream_is_named_as_gone(caplog):
    """A hook that reads request.stream itself leaves the API nothing, stream nor cache: a valid
    hold was answered 400 malformed_json, blaming TEvo, and nothing in the log named the hook.
    With a Content-Length that is seen (chunked, an empty body looks the same as none)."""
    hold = {"remote_id": "L", "quantity": 1, "global_id": "g"}
    app, resp = _post_hold_after_a_vendors_hook("stream", False, hold)
    assert resp.status_code == 500 and resp.json["code"] == "internal_error", resp.json
    [line] = [r.getMessage() for r in caplog.records if "was read before" in r.getMessage()]
    assert "POST /tevo/v1/holds" in line and "request.get_data()" in line
    missing = app.test_client().get("/tevo/v1/holds/g", headers=KEY)
    assert missing.json["code"] == "hold_not_found"


@pytest.mark.parametrize("how", [None, "get_data"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_body_too_large_is_refused_whether_or_not_a_vendors_hook_read_it_first(how, chunked):
    hold = {"remote_id": "L", "quantity": 1, "global_id": "g", "pad": "x" * 70000}
    app, resp = _post_hold_after_a_vendors_hook(how, chunked, hold)
    assert resp.status_code == 413 and resp.json["code"] == "payload_too_large"
    missing = app.test_client().get("/tevo/v1/holds/g", headers=KEY)
    assert missing.json["code"] == "hold_not_found"


# -- the vendor's own error handlers beside the API's -----------------------------------------


def _add_vendor_handlers(app: Flask, kind: str) -> None:
    """Error handlers of the vendor's own, answering its JSON: per status, or for every
    HTTPException (the pattern of Flask's docs)."""

    def vendors(exc: HTTPException) -> ResponseReturnValue:
        return jsonify(vendor=exc.code), exc.code or 500

    if kind == "per status":
        app.register_error_handler(404, vendors)
        app.register_error_handler(405, vendors)
    else:
        app.register_error_handler(HTTPException, vendors)


@pytest.mark.parametrize("trap", [False, True], ids=["", "TRAP_HTTP_EXCEPTIONS"])
@pytest.mark.parametrize("kind", ["per status", "for HTTPException"])
@pytest.mark.parametrize("registered", ["before TevoHold", "after TevoHold"])
def test_the_vendors_error_handlers_answer_its_paths_and_the_api_answers_its_own(
    kind, registered, trap
):
    """As if tevo-hold were not there, on the vendor's paths; problems under the prefix, in
    either order. (An app-wide 404 handler of the extension's took the vendor's 404s from its
    HTTPException handler, and replaced or was replaced by its 404 handler. With
    TRAP_HTTP_EXCEPTIONS, Flask handed the API's routing errors to the vendor's handlers.)"""
    app = Flask("vendor")
    app.config["TRAP_HTTP_EXCEPTIONS"] = trap

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        abort(404)

    @app.before_request
    def closed_on_sundays() -> None:
        if request.headers.get("X-Day") == "sunday":
            abort(403)

    if registered == "before TevoHold":
        _add_vendor_handlers(app, kind)
        _set_up_tevo_hold(app, url_prefix="/tevo")
    else:
        _set_up_tevo_hold(app, url_prefix="/tevo")
        _add_vendor_handlers(app, kind)
    http = app.test_client()
    for method, path, status in [
        ("GET", "/nope", 404),
        ("GET", "/items/3", 404),
        ("DELETE", "/items/3", 405),
    ]:
        theirs = http.open(path, method=method, headers=KEY)
        assert theirs.status_code == status and theirs.json == {"vendor": status}, path
        assert "X-Request-ID" not in theirs.headers  # not a request of the API's
    for method, path, status, code in [
        ("GET", "/tevo/nope", 404, "not_found"),
        ("GET", "/tevo", 404, "not_found"),
        ("PUT", "/tevo/v1/holds", 405, "method_not_allowed"),
    ]:
        ours = http.open(path, method=method, headers=KEY)
        assert ours.status_code == status and ours.mimetype == "application/problem+json", path
        assert ours.json["code"] == code and "X-Request-ID" in ours.headers
    refused = http.get("/tevo/v1/holds/g", headers={**KEY, "X-Day": "sunday"})
    assert refused.status_code == 403 and refused.json["code"] == "http_error"
    assert http.get("/tevo/v1/holds/g", headers=KEY).json["code"] == "hold_not_found"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/tevo/v1/nope", 404), ("GET", "/tevo/v1/holds", 405), ("PUT", "/tevo", 404)],
)
def test_with_trap_http_exceptions_and_no_handler_the_apis_routing_errors_are_problems(
    method, path, status
):
    """Flask finds no handler for a routing error it traps (no route, so no blueprint): the
    API's unknown paths and wrong methods were a 500 text/html page."""
    app = Flask("vendor")
    app.config["TRAP_HTTP_EXCEPTIONS"] = True
    _set_up_tevo_hold(app, url_prefix="/tevo")
    ours = app.test_client().open(path, method=method, headers=KEY)
    assert (ours.status_code, ours.mimetype) == (status, "application/problem+json")
    assert ours.json["status"] == status and "X-Request-ID" in ours.headers


def test_mounted_at_the_root_every_unknown_path_is_a_problem_and_the_vendors_views_its_own():
    app = Flask("vendor")

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        abort(404)

    _set_up_tevo_hold(app, url_prefix="")
    _add_vendor_handlers(app, "per status")
    http = app.test_client()
    for method, path in [("GET", "/nope"), ("PUT", "/v1/holds"), ("POST", "/items/3")]:
        ours = http.open(path, method=method, headers=KEY)
        assert ours.mimetype == "application/problem+json", path
    assert http.get("/items/3").json == {"vendor": 404}  # its view's own 404


# -- more mounts of the blueprint ---------------------------------------------------------------

MULTIPROCESS = {"wsgi.multiprocess": True}  # what gunicorn says with more than one worker


@pytest.mark.parametrize("nested", [False, True])
def test_every_mount_of_the_blueprint_is_the_whole_api(vendor_app, caplog, nested):
    """Problems for unknown paths and wrong methods, request ids, and the refusal of a store in
    memory under several processes, on a second mount as on TevoHold's (a second mount in
    memory under two gunicorn workers sold 7 holds of 4 tickets)."""
    caplog.set_level(logging.ERROR, logger="tevo_hold")
    if nested:  # inside a blueprint of the vendor's
        site = Blueprint("site", __name__)
        site.register_blueprint(create_blueprint("partner"), url_prefix="/partner")
        vendor_app.register_blueprint(site, url_prefix="/site")
        at = "/site/partner"
    else:
        vendor_app.register_blueprint(create_blueprint("partner"), url_prefix="/partner")
        at = "/partner"
    http = vendor_app.test_client()
    for method, path, status, code in [
        ("GET", "/v1/nothing", 404, "not_found"),
        ("PUT", "/v1/holds", 405, "method_not_allowed"),
        ("GET", "/v1/holds/g", 404, "hold_not_found"),
    ]:
        answer = http.open(at + path, method=method, headers=KEY)
        assert answer.status_code == status and answer.mimetype == "application/problem+json"
        assert answer.json["code"] == code and "X-Request-ID" in answer.headers, path
    assert "X-Request-ID" in http.get(at + "/healthz").headers
    body = {"remote_id": "L", "quantity": 1, "global_id": "g"}
    for mount in (at, "/tevo"):
        refused = http.post(
            mount + "/v1/holds", json=body, headers=KEY, environ_overrides=MULTIPROCESS
        )
        assert refused.status_code == 503 and refused.json["code"] == "unavailable", mount
    held = http.post(at + "/v1/holds", json=body, headers=KEY)  # one process: served
    assert held.status_code == 201 and "X-Request-ID" in held.headers
    assert http.get("/tevo/v1/holds/g", headers=KEY).json["status"] == "held"  # one state
    assert "X-Request-ID" not in http.get("/").headers  # the vendor's own


def test_a_mount_of_the_blueprint_without_tevo_hold_or_at_a_relative_prefix_is_refused():
    app = Flask("vendor")
    with pytest.raises(ConfigurationError, match=r"TevoHold\(app\)"):
        app.register_blueprint(create_blueprint("partner"), url_prefix="/partner")
    with_it = _set_up_tevo_hold(Flask("vendor"), url_prefix="/tevo")
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        with_it.register_blueprint(create_blueprint("partner"), url_prefix="partner")


@pytest.mark.parametrize("prefix", ["tevo", "/<tenant>"])
def test_a_prefix_it_cannot_mount_at_is_refused_before_the_app_is_changed(prefix):
    """A prefix without its leading "/" failed in Flask's routing after the extension had
    written app.extensions, so that the retry with "/tevo" was refused as a second init_app."""
    app = Flask("vendor")
    with pytest.raises(ConfigurationError, match=r"url_prefix '/?[<\w>]+'"):
        TevoHold(app, url_prefix=prefix)
    assert EXTENSION_KEY not in app.extensions and not app.blueprints
    TevoHold(app, url_prefix="/tevo")
    assert app.test_client().get("/tevo/healthz").status_code == 200


class TargetFails(RecordingPos):
    """An adapter whose target() fails (reads a setting it was not given)."""

    def target(self) -> str:
        raise RuntimeError("no ACME_POS_URL")


def test_an_adapter_whose_target_fails_stops_the_start_with_its_error_and_nothing_running():
    """Its RuntimeError came out of create_app (a server that failed to boot, a traceback),
    after the embedded default had started the worker thread of the app it refused."""
    name = "tests.test_extension:TargetFails"
    before = set(threading.enumerate())
    with pytest.raises(ConfigurationError) as info:
        create_app({"TEVO_HOLD_API_KEYS": "k", "TEVO_HOLD_ADAPTER": name})
    assert str(info.value) == (
        f"The POS adapter {name} (TEVO_HOLD_ADAPTER={name}): its target() failed: "
        "RuntimeError: no ACME_POS_URL"
    )
    started = [t.name for t in set(threading.enumerate()) - before]
    assert not [n for n in started if n.startswith("embedded-worker-")], started


@pytest.mark.parametrize("given", ["class", "instance"])
def test_an_adapter_class_or_instance_in_app_config_is_refused_saying_what_goes_there(given):
    app = Flask("vendor")
    app.config["TEVO_HOLD_ADAPTER"] = RecordingPos if given == "class" else RecordingPos()
    with pytest.raises(ConfigurationError, match="takes text") as caught:
        TevoHold(app, url_prefix="/tevo")
    assert "service=HoldService(" in str(caught.value) and not app.blueprints


def test_state_lives_in_app_extensions_and_config_is_read_from_app_config():
    app = Flask("vendor")
    app.config.update(TEVO_HOLD_API_KEYS="k1,k2", TEVO_HOLD_HOLD_TTL="42")
    TevoHold(app)
    state = app.extensions[EXTENSION_KEY]
    assert state.settings.api_keys == ("k1", "k2") and state.service.hold_ttl == 42


def test_init_app_twice_names_the_mistake():
    app = Flask("vendor")
    TevoHold(app)
    with pytest.raises(ConfigurationError, match="once per app"):
        TevoHold(app)


# -- the embedded default's listings, however it is set up ------------------------------------

DEMO = {"demo-1": 10, "demo-2": 4, "demo-sold-out": 0}


def _stock(adapter: object, remote_ids: list[str]) -> dict[str, int]:
    assert isinstance(adapter, RedisInventoryAdapter)
    return {rid: adapter.stock(rid).on_hand for rid in remote_ids}


def test_the_demo_listings_ship_inside_the_package_as_declared_package_data():
    package = ROOT / "tevo_hold"
    assert SAMPLE_INVENTORY.parent == package  # not in server/, which no wheel carries
    listed = json.loads(SAMPLE_INVENTORY.read_text("utf-8"))["listings"]
    assert {item["remote_id"]: item["quantity"] for item in listed} == DEMO
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["tevo_hold"]
    relative = str(SAMPLE_INVENTORY.relative_to(package))
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


def test_the_library_on_the_embedded_default_starts_with_the_demo_listings():
    """The README's direct-core example, as written."""
    service = build_service(Settings())
    try:
        outcome = service.hold(remote_id="demo-1", quantity=2, global_id="order-1")
        assert outcome.hold.status == "held" and not outcome.replayed
        assert _stock(service.adapter, list(DEMO)) == DEMO
    finally:
        service.close()


def test_create_app_on_the_embedded_default_serves_the_demo_listings():
    app = create_app({"TEVO_HOLD_API_KEYS": "k"})
    try:
        body = {"remote_id": "demo-1", "quantity": 2, "global_id": "order-1"}
        answer = app.test_client().post("/v1/holds", json=body, headers={"X-API-Key": "k"})
        assert answer.status_code == 201, answer.json
    finally:
        app.extensions[EXTENSION_KEY].service.close()


def test_a_mounted_extension_on_the_embedded_default_stocks_the_inventory_file(tmp_path: Path):
    path = tmp_path / "listings.json"
    path.write_text(json.dumps({"listings": [{"remote_id": "mine", "quantity": 7}]}), "utf-8")
    app = Flask("vendor")
    app.config.update(TEVO_HOLD_API_KEYS="k", TEVO_HOLD_INVENTORY_FILE=str(path))
    TevoHold(app, url_prefix="/tevo")
    service = app.extensions[EXTENSION_KEY].service
    try:
        assert _stock(service.adapter, ["mine"]) == {"mine": 7}
        with pytest.raises(ListingNotFound):  # the file's listings, not the demo's
            _stock(service.adapter, ["demo-1"])
        body = {"remote_id": "mine", "quantity": 7, "global_id": "g"}
        answer = app.test_client().post("/tevo/v1/holds", json=body, headers={"X-API-Key": "k"})
        assert answer.status_code == 201, answer.json
    finally:
        service.close()


@pytest.mark.parametrize(
    "content",
    ['{"items": []}', '{"listings": [{"remote_id": "a", "quantity": 10.7}]}'],
    ids=["shape", "quantity"],
)
def test_a_bad_inventory_file_stops_the_start_naming_it(tmp_path: Path, content: str):
    """A quantity of 10.7 too: it was stocked as 10 tickets."""
    path = tmp_path / "broken.json"
    path.write_text(content, "utf-8")
    with pytest.raises(ConfigurationError, match=r"broken\.json"):
        build_service(Settings(inventory_file=str(path)))


def test_with_redis_no_listings_are_stocked(redis_url: str):
    """The inventory file is the embedded default's: a real Redis keeps its own listings."""
    service = build_service(Settings(redis_url=redis_url, api_keys=("k",)))
    try:
        service.ledger.client.delete(*service.ledger.keys.listing("demo-1"))
        service.close()
        service = build_service(Settings(redis_url=redis_url, api_keys=("k",)))
        with pytest.raises(ListingNotFound):
            _stock(service.adapter, ["demo-1"])
    finally:
        service.close()


# -- the adapter it records for the worker and the CLI ------------------------------------------


def test_the_extension_records_its_adapter_class_under_the_key_prefix(vendor_app):
    service = vendor_app.extensions[EXTENSION_KEY].service
    key = service.ledger.keys.server_adapter()
    assert key == "tevo_hold:{server}:adapter"  # hash-tagged: one slot on a cluster
    recorded = service.ledger.client.get(key)
    assert recorded == b"tevo_hold.adapters.redis_inventory:RedisInventoryAdapter"


def test_a_redis_down_at_start_up_is_logged_and_the_app_still_starts(caplog):
    app = Flask("vendor")
    app.config.update(
        TEVO_HOLD_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", TEVO_HOLD_API_KEYS="k"
    )
    with caplog.at_level(logging.WARNING, logger="tevo_hold"):
        TevoHold(app)
    try:
        assert "could not record the POS adapter in Redis (Unavailable)" in caplog.text
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions[EXTENSION_KEY].service.close()


def test_proxy_hops_on_a_vendors_app_says_it_does_nothing_there(caplog):
    """TEVO_HOLD_PROXY_HOPS wraps create_app's app only: the extension does not wrap the
    vendor's wsgi_app (its other paths, its own proxy setup), and says so rather than let the
    setting pass for one that works."""
    settings = Settings(redis_url="redis://unused", api_keys=("vendor-key",), proxy_hops=1)
    service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    app = Flask("vendor")
    with caplog.at_level(logging.WARNING, logger="tevo_hold"):
        TevoHold(app, service=service, settings=settings)
    assert "TEVO_HOLD_PROXY_HOPS applies to the app of create_app only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tevo_hold"):
        create_app({"TEVO_HOLD_PROXY_HOPS": "1", "TEVO_HOLD_API_KEYS": "k"}, service=service)
    assert "TEVO_HOLD_PROXY_HOPS" not in caplog.text


# -- the embedded default in several processes -------------------------------------------------


def test_memory_mode_refuses_every_call_when_served_by_several_processes(caplog):
    app = create_app({"TEVO_HOLD_API_KEYS": "k"})
    http = app.test_client()
    body = {"remote_id": "demo-1", "quantity": 1, "global_id": "g"}
    try:
        with caplog.at_level(logging.ERROR, logger="tevo_hold"):
            for path in ("/v1/holds", "/v1/holds/g", "/readyz"):
                answer = (http.post if path == "/v1/holds" else http.get)(
                    path, json=body, headers={"X-API-Key": "k"}, environ_overrides=MULTIPROCESS
                )
                assert answer.status_code == 503, (path, answer.json)
                assert answer.json["code"] == "unavailable"
                assert "several processes" in answer.json["detail"]
        assert "TEVO_HOLD_REDIS_URL" in caplog.text
        assert http.get("/healthz", environ_overrides=MULTIPROCESS).status_code == 200  # it is up
        one = http.post("/v1/holds", json=body, headers={"X-API-Key": "k"})
        assert one.status_code == 201, one.json  # one process: served
    finally:
        app.extensions[EXTENSION_KEY].service.close()


def test_with_redis_several_processes_are_served(redis_url: str):
    app = create_app({"TEVO_HOLD_REDIS_URL": redis_url, "TEVO_HOLD_API_KEYS": "k"})
    try:
        answer = app.test_client().get("/healthz", environ_overrides=MULTIPROCESS)
        assert answer.status_code == 200
    finally:
        app.extensions[EXTENSION_KEY].service.close()


def test_the_apps_hooks_run_on_every_request_and_coroutine_hooks_are_never_taken_as_plain():
    """create_app's app remembers which hooks and views are plain functions (Flask would ask
    on every request): each still runs on every request, and a coroutine function is handed
    to Flask's async support every time (here: refused, asgiref is not installed)."""
    app = create_app()
    try:
        calls: list[str] = []

        @app.before_request
        def counted() -> None:
            calls.append(request.path)

        client = app.test_client()
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        assert calls == ["/healthz"] * 3
        assert app.ensure_sync(counted) is counted

        async def later() -> None:
            return None

        for _ in range(2):  # never remembered as plain
            with pytest.raises(RuntimeError, match="async"):
                app.ensure_sync(later)
    finally:
        app.extensions[EXTENSION_KEY].service.close()


def test_the_demo_key_opens_only_the_embedded_store_the_extension_built_itself(caplog):
    """Settings left on the embedded default with no keys, and a service of the vendor's own
    Redis handed in: only managed keys open it; the public demo key is refused."""
    caplog.set_level(logging.WARNING, logger="tevo_hold")
    settings = Settings(api_keys=())
    assert settings.embedded  # the fallback that once let the demo key in
    service = build_service(
        Settings(redis_url="redis://unused"),
        client=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
    )
    service.adapter.set_quantity("L", 3)  # type: ignore[attr-defined]
    app = create_app(service=service)
    http = app.test_client()
    body = {"remote_id": "L", "quantity": 3, "global_id": "g"}
    refused = http.post("/v1/holds", json=body, headers={"X-API-Key": "demo-key"})
    assert refused.status_code == 401 and refused.json["code"] == "unauthorized"
    assert service.adapter.stock("L").held == 0  # type: ignore[attr-defined]
    assert "Set TEVO_HOLD_API_KEYS" in caplog.text and "embedded default" not in caplog.text
    vendor = Flask("vendor")
    TevoHold(vendor, service=service, settings=settings)
    assert (
        vendor.test_client()
        .post("/v1/holds", json=body, headers={"X-API-Key": "demo-key"})
        .status_code
        == 401
    )


def test_a_key_list_in_flask_config_with_no_key_in_it_is_warned_of(caplog):
    """``app.config["TEVO_HOLD_API_KEYS"] = [os.environ.get("K", "")]`` with K unset: the key
    "" refused every call, and the start's warning that there is no key was not logged."""
    app = Flask("vendor")
    app.config.update({"TEVO_HOLD_REDIS_URL": "redis://unused", "TEVO_HOLD_API_KEYS": [""]})
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    service = build_service(Settings.from_mapping(app.config), client=client)
    with caplog.at_level(logging.WARNING, logger="tevo_hold"):
        TevoHold(app, service=service)
    assert "TEVO_HOLD_API_KEYS is empty" in caplog.text
    answer = app.test_client().get("/v1/holds/g", headers={"X-API-Key": ""})
    assert answer.status_code == 401


def test_a_short_key_is_warned_of_once_by_its_fingerprint(caplog):
    """TEVO_HOLD_API_KEYS took "a", or the docs' own "key-for-tevo", without a word, and
    nothing throttles failed keys. Each short key is warned of at start, named by its
    fingerprint only, with how to make a strong one; the embedded demo's demo key is not."""
    strong = secrets.token_urlsafe(32)
    service = build_service(
        Settings(redis_url="redis://unused"),
        client=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
    )
    with caplog.at_level(logging.WARNING, logger="tevo_hold"):
        keys = f"key-for-tevo, {strong}, key-for-tevo"
        app = create_app({"TEVO_HOLD_API_KEYS": keys}, service=service)
    warned = [r.getMessage() for r in caplog.records if "shorter than 32" in r.getMessage()]
    assert len(warned) == 1, warned
    assert env_name("key-for-tevo") in warned[0]
    assert "secrets.token_urlsafe(32)" in warned[0]
    assert "key-for-tevo" not in caplog.text and strong not in caplog.text
    assert env_name(strong) not in caplog.text
    short = {"X-API-Key": "key-for-tevo"}
    assert app.test_client().get("/v1/holds/g", headers=short).status_code == 404  # it works
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tevo_hold"):
        demo = create_app()
    demo.extensions[EXTENSION_KEY].service.close()
    assert "Demo API key: demo-key" in caplog.text and "shorter than" not in caplog.text


def test_the_demo_key_never_reaches_a_real_pos(caplog):
    """No Redis URL and no API keys (an environment file that failed to load) with
    TEVO_HOLD_ADAPTER=http: the server accepted the published demo key, and anyone could hold
    and invoice in the real POS; only the embedded-mode warning said so. Now every call answers
    401 (the state is in memory: no managed key can be made), and the start says why."""
    caplog.set_level(logging.WARNING, logger="tevo_hold")
    with pos_double(stock={"R": 5}) as pos:
        app = create_app(
            {
                "TEVO_HOLD_ADAPTER": "http",
                "TEVO_HOLD_POS_URL": pos.url,
                "TEVO_HOLD_POS_API_KEY": pos.api_key,
            }
        )
        state = app.extensions[EXTENSION_KEY]
        try:
            http = app.test_client()
            demo = {"X-API-Key": "demo-key"}
            body = {"remote_id": "R", "quantity": 5, "global_id": "attacker-1"}
            held = http.post("/v1/holds", json=body, headers=demo)
            invoice = {"global_id": "attacker-1", "tevo_order_id": 1}
            invoiced = http.post("/v1/invoices", json=invoice, headers=demo)
            assert (held.status_code, invoiced.status_code) == (401, 401)
            assert pos.count() == 0 and pos.available("R") == 5
        finally:
            assert state.worker_stop is not None
            state.worker_stop.set()
            state.service.close()
    assert "TEVO_HOLD_ADAPTER=http calls a POS" in caplog.text
    assert "every API call answers 401" in caplog.text
    assert "Demo API key" not in caplog.text


class _LapsePos(RecordingPos):
    """A POS whose holds do not lapse by themselves: each lapse needs a release call."""

    calls: ClassVar[list[tuple[str, str]]] = []  # type: ignore[misc]


def test_memory_mode_with_a_pos_adapter_runs_a_worker_thread_that_releases_lapsed_holds(caplog):
    """tevo-hold worker cannot reach a store in the server's memory: without a thread of the
    server's own, every lapsed hold stayed held in the POS for good."""
    caplog.set_level(logging.INFO, logger="tevo_hold")
    app = create_app(
        {
            "TEVO_HOLD_ADAPTER": "tests.test_extension:_LapsePos",
            "TEVO_HOLD_API_KEYS": "vendor-key",  # the demo key opens the reference adapter only
            "TEVO_HOLD_HOLD_TTL": "0.2",
            "TEVO_HOLD_WORKER_INTERVAL": "0.02",
        }
    )
    state = app.extensions[EXTENSION_KEY]
    try:
        assert "a worker thread of this process releases lapsed holds" in caplog.text
        # what a POS on a store in memory risks, said once (where the store was made)
        said = [r for r in caplog.records if "this process's memory" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.ERROR]
        body = {"remote_id": "demo-1", "quantity": 2, "global_id": "lapses"}
        resp = app.test_client().post("/v1/holds", json=body, headers=KEY)
        assert resp.status_code == 201
        deadline = time.monotonic() + 10
        while ("release", "lapses") not in _LapsePos.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _LapsePos.calls == [("hold", "lapses"), ("release", "lapses")]
        assert state.service.ledger.backlog().items == 0
    finally:
        assert state.worker_stop is not None
        state.worker_stop.set()


def test_no_worker_thread_where_the_reference_adapter_keeps_the_stock_itself(caplog):
    caplog.set_level(logging.INFO, logger="tevo_hold")
    assert create_app().extensions[EXTENSION_KEY].worker_stop is None
    # that the state is in memory, said once (where the store was made), not again by TevoHold
    said = [r for r in caplog.records if "this process's memory" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING]


def _threads_in_a_forked_child(names: tuple[str, ...], wait: float = 5.0) -> dict[str, bool]:
    """Fork as gunicorn --preload does after loading the app; which of ``names`` (thread name
    prefixes) run in the child within ``wait`` seconds."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        deadline = time.monotonic() + wait
        seen: dict[str, bool] = {}
        while time.monotonic() < deadline:
            running = [t.name for t in threading.enumerate() if t.is_alive()]
            seen = {n: any(r.startswith(n) for r in running) for n in names}
            if all(seen.values()):
                break
            time.sleep(0.02)
        os.write(write, json.dumps(seen).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        seen = json.loads(answer.read())
    os.waitpid(pid, 0)
    return seen


def test_a_process_forked_after_the_app_loaded_runs_its_worker_and_sweep_threads():
    """Threads do not survive a fork: under gunicorn --preload (or uWSGI) the embedded worker and
    the store's sweep ran in the master only, and the process serving requests had neither
    (lapsed holds stayed held in the POS, finished ones stayed in memory)."""
    app = create_app({"TEVO_HOLD_ADAPTER": "tests.test_extension:_LapsePos"})
    state = app.extensions[EXTENSION_KEY]
    worker = state.worker.name  # this app's (an earlier test's app may not be collected yet)
    try:
        seen = _threads_in_a_forked_child((worker, "tevo-hold-memory-sweep"))
        assert seen == {worker: True, "tevo-hold-memory-sweep": True}
    finally:
        state.worker_stop.set()
    stopped = _threads_in_a_forked_child((worker,), wait=0.5)
    assert stopped == {worker: False}  # an app's stopped worker stays stopped


def test_a_service_in_memory_handed_in_without_keys_says_to_set_keys(caplog):
    """tevo-hold keys create cannot reach a store in this process's memory: the warning that
    pointed there left such an app answering 401 with no way out it named."""
    caplog.set_level(logging.WARNING, logger="tevo_hold")
    app = Flask("vendor")
    TevoHold(app, service=build_service(Settings()))
    assert "where tevo-hold keys create cannot reach" in caplog.text
    assert "only managed keys" not in caplog.text
