"""Request ids, JSON access log lines, /metrics and /readyz, through the Flask app.

The same under gunicorn's several workers, and /readyz with a redis-server stopped, are in
test_operations.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import string
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import quote

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

from tevo_hold import (
    HoldService,
    PosAdapter,
    Settings,
    build_service,
    create_app,
    errors,
    metrics,
    observability,
    web,
)
from tevo_hold._flusher import Flusher
from tevo_hold.adapters.http import HttpPosAdapter
from tevo_hold.auth import env_name
from tevo_hold.ledger import Backlog
from tevo_hold.observability import PIPE_BUF, JsonFormatter, LineHandler
from tevo_hold.worker import Worker

from .conftest import API_KEY, AUTH
from .servers import free_port, http_server

HOLD = {"remote_id": "L1", "quantity": 1, "global_id": "obs-1"}


def value(name: str, **labels: str) -> float:
    """A sample's value now in this process's registry (0 if it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def stocked(http: FlaskClient, service: HoldService) -> FlaskClient:
    service.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    return http


def in_a_forked_child(run: Callable[[], str]) -> str:
    """What ``run`` answers in a child process forked from this one."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, run().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1000).decode()
    finally:
        os.waitpid(pid, 0)
        os.close(read)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    observability.flush_access_log()  # the lines the flushing thread has not logged yet
    return [r for r in caplog.records if r.name == "tevo_hold.access"]


# -- request ids -------------------------------------------------------------------------------


def test_a_given_request_id_is_echoed(stocked: FlaskClient) -> None:
    resp = stocked.post("/v1/holds", json=HOLD, headers={**AUTH, "X-Request-ID": "tevo-abc.123"})
    assert resp.headers["X-Request-ID"] == "tevo-abc.123"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "bad id", "a;b", "<script>", "ü"])
def test_a_missing_or_unusable_request_id_is_replaced_by_a_new_one(
    stocked: FlaskClient, given: str | None
) -> None:
    headers = dict(AUTH) if given is None else {**AUTH, "X-Request-ID": given}
    first = stocked.get("/v1/holds/nope", headers=headers).headers["X-Request-ID"]
    second = stocked.get("/v1/holds/nope", headers=headers).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


@pytest.mark.parametrize("given", ["abc\n", "abc\r\n", "a\nb"], ids=repr)
def test_a_request_id_with_a_line_break_is_replaced_not_a_500(
    stocked: FlaskClient, given: str
) -> None:
    """ "abc\n" once passed the check ("$" matches before a final newline), and setting the
    answer's header then failed: a 500 http_error instead of the hold's answer."""
    environ = {"HTTP_X_REQUEST_ID": given}  # as a WSGI server hands it over, newline and all
    resp = stocked.post("/v1/holds", json=HOLD, headers=AUTH, environ_overrides=environ)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


def test_new_request_ids_and_lease_tokens_differ_in_every_forked_worker() -> None:
    """Both come from random (not os.urandom), which each forked worker must reseed."""
    from tevo_hold import _unique, service

    assert observability._new_request_id is service.unique_hex is _unique.unique_hex
    ids = {in_a_forked_child(_unique.unique_hex) for _ in range(3)}
    ids |= {_unique.unique_hex(), _unique.unique_hex()}
    assert len(ids) == 5 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_errors_and_public_endpoints_carry_a_request_id_too(stocked: FlaskClient) -> None:
    for resp in (
        stocked.get("/healthz"),
        stocked.get("/no/such/path"),
        stocked.post("/v1/holds", json=HOLD),
        stocked.post("/v1/holds", data="{", content_type="application/json", headers=AUTH),
    ):
        assert "X-Request-ID" in resp.headers, resp.status_code


# -- the access log ----------------------------------------------------------------------------


def test_one_json_access_line_per_request_with_key_name_and_global_id(
    stocked: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    stocked.post("/v1/holds", json=HOLD, headers={**AUTH, "X-Request-ID": "rid-1"})
    stocked.get("/v1/holds/obs-1", headers=AUTH)
    stocked.post("/v1/holds", json={**HOLD, "quantity": 99}, headers={"X-API-Key": "wrong"})
    records = access_records(caplog)
    assert len(records) == 3
    lines = [json.loads(JsonFormatter().format(r)) for r in records]

    made, got, refused = lines
    assert made["request_id"] == "rid-1"
    assert (made["method"], made["path"], made["status"]) == ("POST", "/v1/holds", 201)
    assert (made["key"], made["global_id"]) == (env_name(API_KEY), "obs-1")
    assert made["logger"] == "tevo_hold.access" and made["level"] == "INFO"
    assert isinstance(made["duration_ms"], float) and made["duration_ms"] >= 0
    datetime.fromisoformat(made["ts"].replace("Z", "+00:00"))
    assert (got["global_id"], got["status"], got["key"]) == ("obs-1", 200, env_name(API_KEY))
    assert (refused["status"], refused["code"], refused["key"]) == (401, "unauthorized", None)
    for record in records:
        assert API_KEY not in JsonFormatter().format(record)
        assert "wrong" not in JsonFormatter().format(record)


def test_an_access_line_is_logged_by_a_thread_as_if_in_its_request(
    stocked: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    before = time.time()
    stocked.post("/v1/holds", json=HOLD, headers={**AUTH, "X-Request-ID": "rid-later"})
    answered = time.time()

    def logged() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "rid-later"
        ]

    # not flushed by hand: the flushing thread logs it within ACCESS_LOG_INTERVAL
    deadline = time.monotonic() + observability.ACCESS_LOG_INTERVAL * 50
    while not logged() and time.monotonic() < deadline:
        time.sleep(observability.ACCESS_LOG_INTERVAL / 4)
    (record,) = logged()
    assert before <= record.created <= answered  # the request's time, not the flush's
    assert record.msecs == int((record.created - int(record.created)) * 1000)
    # the thread that served the request (the test client's, this one), not the flusher's
    assert (record.thread, record.threadName) == (
        threading.get_ident(),
        threading.current_thread().name,
    )
    assert record.getMessage() == "POST /v1/holds 201"


def test_past_the_backlog_a_request_logs_the_waiting_lines_itself(
    stocked: FlaskClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log that cannot keep up slows requests down rather than fill memory: with no backlog
    allowed, each request's line is logged before its answer returns (twenty in a row: the
    flushing thread, every 0.1 s, would not be there first each time)."""
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    monkeypatch.setattr(observability, "ACCESS_LOG_BACKLOG", 0)
    for n in range(20):
        stocked.get("/healthz", headers={"X-Request-ID": f"backlog-{n}"})
        logged = [getattr(r, "fields", {}).get("request_id") for r in caplog.records]
        assert f"backlog-{n}" in logged
        assert len(observability._ACCESS_LINES) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/holds/" + "%FF" * 1300,  # each byte that is not UTF-8 read as U+FFFD, 3 bytes
        "/v1/holds/" + "%01" * 2000,  # a control character: a 6-byte escape in JSON
        "/nowhere/" + "票" * 3000,
        "/nowhere/" + "a" * 10_000,
    ],
)
def test_an_access_line_fits_one_atomic_pipe_write_whatever_the_path(
    http: FlaskClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """Was: the path, in the line twice (message and path), made a line of 8 KB from a 404's
    path of 1,300 "%FF"; over PIPE_BUF a write to the pipe the workers share is not atomic,
    and with two workers 160 of 209 such lines were interleaved, not JSON."""
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    http.get(path, headers=AUTH)
    (record,) = access_records(caplog)
    line = (JsonFormatter().format(record) + "\n").encode("utf-8", "backslashreplace")
    assert len(line) < PIPE_BUF
    entry = json.loads(line)
    assert entry["path"].endswith(observability.CUT)
    assert len(json.dumps(entry["path"], ensure_ascii=False).encode()) <= (
        observability.MAX_PATH_BYTES
    )
    assert entry["path_chars"] > len(entry["path"])  # how long it was
    assert path.startswith(entry["path"][:9])
    assert len(entry["message"]) < len(entry["path"])  # the message has only its start
    if entry["global_id"] is not None:  # taken from the path before it was checked
        assert entry["global_id"].endswith(observability.CUT)


def test_a_path_within_bounds_is_logged_whole_and_not_marked(
    http: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    path = "/nowhere/" + "b" * 900
    http.get(path)
    (record,) = access_records(caplog)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["path"] == path and "path_chars" not in entry


def test_a_forked_child_logs_its_own_access_lines_only(caplog: pytest.LogCaptureFixture) -> None:
    info = observability.RequestInfo(request_id="parent-line", started=0.0)
    with caplog.at_level(logging.INFO, logger="tevo_hold.access"):
        observability._ACCESS_LINES.append(
            (time.time(), threading.current_thread(), info, "GET", "/p", 200, 0.001, None)
        )
        # the child: the parent's waiting line is not its to log
        assert in_a_forked_child(lambda: str(len(observability._ACCESS_LINES))) == "0"
        # the parent's is still the parent's: logged once, here (by its flushing thread, if that
        # runs in this process and came first, or by this flush)
        records = access_records(caplog)
    assert [r.fields["request_id"] for r in records] == ["parent-line"]  # type: ignore[attr-defined]


def test_json_lines_are_stamped_with_their_own_time_in_utc() -> None:
    formatter = JsonFormatter()  # one formatter, as a handler has: it remembers the last second
    for created in (1_800_000_000.5, 1_800_000_000.999, 1_800_000_001.0, 1_700_000_000.25):
        record = logging.LogRecord("x", logging.INFO, __file__, 0, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        ts = json.loads(formatter.format(record))["ts"]
        assert datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() == pytest.approx(
            int(created * 1000) / 1000
        )
        assert ts.endswith("Z") and len(ts) == len("2027-01-15T08:00:00.500Z")


def test_every_log_line_during_a_request_is_json_with_its_id(service: HoldService) -> None:
    class Broken(PosAdapter):
        def hold(self, **kwargs: Any) -> None:
            raise RuntimeError("bug in the adapter")

        def release(self, **kwargs: Any) -> None: ...

        def invoice(self, **kwargs: Any) -> None: ...

    broken = HoldService(service.ledger, Broken())
    app = create_app({"TEVO_HOLD_API_KEYS": API_KEY, "TESTING": True}, service=broken)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        headers = {**AUTH, "X-Request-ID": "r9"}
        resp = app.test_client().post("/v1/holds", json=HOLD, headers=headers)
        observability.flush_access_log()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert resp.status_code == 500
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    error = next(line for line in lines if line["level"] == "ERROR")
    access = next(line for line in lines if line["logger"] == "tevo_hold.access")
    assert error["request_id"] == access["request_id"] == "r9"
    assert "bug in the adapter" in error["exc_info"]
    assert (access["status"], access["code"]) == (500, "internal_error")
    assert API_KEY not in stream.getvalue()


@pytest.mark.parametrize(
    ("hops", "forwarded", "logged"),
    [
        (0, None, "10.0.0.5"),
        (0, "203.0.113.9", "10.0.0.5"),  # trusted from no one: a client may send it
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # what the client sent before the proxy's
        (2, "6.6.6.6, 203.0.113.9", "6.6.6.6"),
        (1, None, "10.0.0.5"),
    ],
)
def test_the_access_log_names_the_client_behind_as_many_proxies_as_proxy_hops_says(
    service: HoldService,
    caplog: pytest.LogCaptureFixture,
    hops: int,
    forwarded: str | None,
    logged: str,
) -> None:
    """Behind nginx every line named nginx (10.0.0.5 here): nothing read the X-Forwarded-For
    that the documented nginx setup sends. TEVO_HOLD_PROXY_HOPS=N trusts its last N addresses,
    and no more, so a client cannot choose the address logged for it; 0 (the default) none."""
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    config = {"TEVO_HOLD_API_KEYS": API_KEY, "TEVO_HOLD_PROXY_HOPS": hops, "TESTING": True}
    http = create_app(config, service=service).test_client()
    headers = {**AUTH, "X-Request-ID": f"hops-{hops}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    resp = http.get("/v1/holds/nope", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert resp.status_code == 404
    (record,) = access_records(caplog)
    assert record.fields["remote_addr"] == logged  # type: ignore[attr-defined]


#: A path forging a second line in a plain-text log, then clearing the reader's terminal.
FORGED = "x\n2026-11-30 09:00:00,000 CRITICAL vendor: \x1b[2Jadmin password reset\u2028by root"


def test_a_plain_text_log_has_one_line_per_request_whatever_its_path(
    service: HoldService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding vendor routes tevo_hold's loggers into its own logging, often plain text,
    which writes a message as it is: a path's newline (%0A) forged a log line there, and its ESC
    sequence reached the terminal of whoever read the log. The messages escape what a client
    chose; the JSON fields keep it as it came (JSON escapes it itself)."""

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug")

    app = create_app({"TEVO_HOLD_API_KEYS": API_KEY, "TESTING": True}, service=service)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tevo_hold")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []
    handler.addFilter(lambda record: records.append(record) or True)
    try:
        http = app.test_client()
        path = "/v1/holds/" + quote(FORGED)  # as sent: %0A, %1B...
        assert http.get(path, headers=AUTH).status_code == 404
        monkeypatch.setattr(service, "get", broken)
        assert http.get(path, headers=AUTH).status_code == 500
        observability.flush_access_log()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = stream.getvalue()
    for char in ("\x1b", "\u2028", "\r"):
        assert char not in text
    lines = [line for line in text.splitlines() if not line.startswith(("Traceback", " "))]
    # the error's line (its traceback indented under it), then one access line per request
    assert [line.split(":", 1)[0] for line in lines if "CRITICAL" in line] == [
        "ERROR tevo_hold",
        "INFO tevo_hold.access",
        "INFO tevo_hold.access",
    ]
    escaped = "/v1/holds/x\\x0a2026-11-30 09:00:00,000 CRITICAL vendor: \\x1b[2Jadmin"
    assert all(escaped in line for line in lines if "CRITICAL" in line)
    access = [r for r in records if r.name == "tevo_hold.access"]
    assert [json.loads(JsonFormatter().format(r))["path"] for r in access] == [
        f"/v1/holds/{FORGED}"
    ] * 2


def test_printable_escapes_what_a_plain_text_log_would_write_raw() -> None:
    assert observability.printable("/v1/holds/order-1 é") == "/v1/holds/order-1 é"
    assert observability.printable("a\r\nb\x1b\x7f\x85\u2028\u202e\udc80") == (
        "a\\x0d\\x0ab\\x1b\\x7f\\x85\\u2028\\u202e\\udc80"
    )


# -- /metrics ------------------------------------------------------------------------------------


def test_metrics_is_prometheus_text_without_a_key(http: FlaskClient) -> None:
    resp = http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = resp.get_data(as_text=True)
    families = {family.name for family in text_string_to_metric_families(text)}
    assert "tevo_hold_holds" in families
    for name in (
        "tevo_hold_http_requests_total",
        "tevo_hold_http_request_duration_seconds",
        "tevo_hold_holds_total",
        "tevo_hold_pos_call_duration_seconds",
        "tevo_hold_pos_calls_total",
        "tevo_hold_holds_lapsed_total",
        "tevo_hold_invoice_failures_total",
        "tevo_hold_due_items",
        "tevo_hold_due_oldest_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_requests_and_outcomes_are_counted(stocked: FlaskClient) -> None:
    endpoint = {"endpoint": "/v1/holds", "method": "POST"}
    before = {
        "201": value("tevo_hold_http_requests_total", **endpoint, status="201"),
        "latency": value("tevo_hold_http_request_duration_seconds_count", **endpoint),
        "held": value("tevo_hold_holds_total", outcome="held"),
        "replayed": value("tevo_hold_holds_total", outcome="replayed"),
        "conflict": value("tevo_hold_holds_total", outcome="global_id_conflict"),
    }
    stocked.post("/v1/holds", json=HOLD, headers=AUTH)
    stocked.post("/v1/holds", json=HOLD, headers=AUTH)
    stocked.post("/v1/holds", json={**HOLD, "quantity": 2}, headers=AUTH)
    assert value("tevo_hold_http_requests_total", **endpoint, status="201") == before["201"] + 2
    assert value("tevo_hold_http_request_duration_seconds_count", **endpoint) == (
        before["latency"] + 3
    )
    assert value("tevo_hold_holds_total", outcome="held") == before["held"] + 1
    assert value("tevo_hold_holds_total", outcome="replayed") == before["replayed"] + 1
    assert value("tevo_hold_holds_total", outcome="global_id_conflict") == before["conflict"] + 1


def _series(http: FlaskClient, family: str) -> list[dict[str, str]]:
    text = http.get("/metrics").get_data(as_text=True)
    return [
        sample.labels
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
    ]


def test_methods_a_client_makes_up_add_no_series_to_the_metrics(http: FlaskClient) -> None:
    """Was: each method sent (gunicorn takes any token of 3-20 characters) to an unknown path,
    or to a route that does not take it, was a new series of every HTTP metric, for good: 300
    requests made /metrics 4,826 lines long, half a megabyte, and growing."""
    rng = random.Random(7)

    def made_up() -> str:
        return "".join(rng.choices(string.ascii_uppercase + string.digits, k=rng.randint(3, 20)))

    for method in ("GET", "BREW", "DELETE"):  # whatever series these make, made once
        http.open("/nowhere", method=method)
        http.open("/v1/holds", method=method)
    _series(http, "tevo_hold_http_requests")  # and the series of reading /metrics
    before = len(_series(http, "tevo_hold_http_requests"))
    for _ in range(100):
        http.open("/nowhere", method=made_up())
        http.open("/v1/holds", method=made_up(), headers=AUTH)
    after = _series(http, "tevo_hold_http_requests")
    assert len(after) == before
    methods = {labels["method"] for labels in after}
    assert methods <= observability.METRIC_METHODS | {"other"}
    assert {"endpoint": "unmatched", "method": "other", "status": "404"} in after
    assert {"endpoint": "unmatched", "method": "other", "status": "405"} in after
    latency = {
        labels["method"] for labels in _series(http, "tevo_hold_http_request_duration_seconds")
    }
    assert latency <= observability.METRIC_METHODS | {"other"}


def test_metric_children_are_batches_of_those_of_labels_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    children = metrics.Children(metrics.POS_CALLS)
    assert children("hold", "ok").child is metrics.POS_CALLS.labels("hold", "ok")
    assert children("hold", "ok") is children("hold", "ok")
    monkeypatch.setattr(metrics, "MAX_CHILDREN", 1)
    # past the bound a child is still the right one, just not remembered
    assert children("hold", "pos_error").child is metrics.POS_CALLS.labels("hold", "pos_error")
    assert len(children._children) == 1


def samples(metric: Any) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in metric.collect() for s in family.samples]


def test_a_batched_histogram_reads_as_one_observed_call_by_call() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()  # private metrics: nothing else counts in them
    direct = Histogram("direct_seconds", "d", ["a"], buckets=(0.01, 0.1, 1.0), registry=registry)
    batched = Histogram("batched_seconds", "b", ["a"], buckets=(0.01, 0.1, 1.0), registry=registry)
    counter = Counter("batched_calls", "c", ["a"], registry=registry)
    amounts = [0.0, 0.005, 0.01, 0.0100001, 0.1, 0.5, 1.0, 1.5, 99.0, 0.01]
    histogram, calls = metrics.Children(batched), metrics.Children(counter)
    for amount in amounts:
        direct.labels("x").observe(amount)
        histogram("x").observe(amount)
        calls("x").inc()
    metrics.flush()
    got = {(name, labels.get("le")): v for name, labels, v in samples(batched)}
    want = {
        (name.replace("direct", "batched"), labels.get("le")): v
        for name, labels, v in samples(direct)
    }
    # a flush may come between two observations: the sum is then added up in another order
    assert got.pop(("batched_seconds_sum", None)) == pytest.approx(sum(amounts))
    del want[("batched_seconds_sum", None)], want[("batched_seconds_created", None)]
    del got[("batched_seconds_created", None)]
    assert got == want
    assert ("batched_calls_total", {"a": "x"}, 10.0) in samples(counter)


def test_batched_counts_are_read_at_once_and_flushed_by_a_thread_anyway() -> None:
    endpoint = {"endpoint": "/batched", "method": "GET", "status": "200"}
    before = value("tevo_hold_http_requests_total", **endpoint)
    metrics.Children(metrics.REQUESTS)(*endpoint.values()).inc()
    # reading the registry flushes this process's counts first
    assert value("tevo_hold_http_requests_total", **endpoint) == before + 1

    # unread, they reach prometheus_client's value within FLUSH_INTERVAL all the same
    child = metrics.REQUESTS.labels(*endpoint.values())
    metrics.Children(metrics.REQUESTS)(*endpoint.values()).inc(2)
    deadline = time.monotonic() + metrics.FLUSH_INTERVAL * 5
    while child._value.get() != before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child._value.get() == before + 3


def test_a_forked_child_flushes_its_own_counts_only() -> None:
    endpoint = {"endpoint": "/forked", "method": "GET", "status": "200"}
    batch = metrics.Children(metrics.REQUESTS)(*endpoint.values())
    child = metrics.REQUESTS.labels(*endpoint.values())
    batch.inc(5)  # the parent's, not yet flushed

    def in_the_child() -> str:  # its copy of the parent's 5 is not its own; its 1 is
        batch.inc()
        deadline = time.monotonic() + metrics.FLUSH_INTERVAL * 5
        while child._value.get() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # its own flushing thread writes it
        return str(child._value.get())

    assert float(in_a_forked_child(in_the_child)) == 1.0
    metrics.flush()
    assert child._value.get() == 5.0


class FailingInvoices(PosAdapter):
    """Holds and releases succeed; invoices fail until ``fixed``."""

    def __init__(self) -> None:
        self.fixed = False

    def hold(self, **kwargs: Any) -> None: ...

    def release(self, **kwargs: Any) -> None: ...

    def invoice(self, **kwargs: Any) -> None:
        if not self.fixed:
            raise errors.PosError("the POS said no")


@pytest.fixture
def failing(client: redis.Redis) -> Iterator[tuple[HoldService, FailingInvoices]]:
    adapter = FailingInvoices()
    service = build_service(Settings(api_keys=(API_KEY,), retry_base=0.001), client=client)
    yield HoldService(service.ledger, adapter, retry_base=0.001, hold_ttl=0.3), adapter


def test_pos_calls_failed_invoices_and_lapses_are_counted(
    failing: tuple[HoldService, FailingInvoices],
) -> None:
    service, adapter = failing
    names: dict[str, Callable[[], float]] = {
        "pos_hold_ok": lambda: value("tevo_hold_pos_calls_total", call="hold", result="ok"),
        "pos_hold_time": lambda: value("tevo_hold_pos_call_duration_seconds_count", call="hold"),
        "pos_invoice_err": lambda: value(
            "tevo_hold_pos_calls_total", call="invoice", result="pos_error"
        ),
        "failed_api": lambda: value("tevo_hold_invoice_failures_total", by="api"),
        "failed_worker": lambda: value("tevo_hold_invoice_failures_total", by="worker"),
        "invoiced": lambda: value("tevo_hold_invoices_total", outcome="invoiced"),
        "lapsed": lambda: value("tevo_hold_holds_lapsed_total", seen_by="release"),
    }
    before = {name: read() for name, read in names.items()}

    service.hold(remote_id="L1", quantity=1, global_id="m-1")
    with pytest.raises(errors.PosError):
        service.invoice(global_id="m-1", tevo_order_id=7)
    worker = Worker(service, name="w")
    time.sleep(0.05)
    assert worker.run_once() == 1  # the retry fails again
    adapter.fixed = True
    time.sleep(0.05)
    assert worker.run_once() == 1  # and then succeeds

    service.hold(remote_id="L1", quantity=1, global_id="m-2")
    time.sleep(0.4)  # hold_ttl is 0.3 s
    assert service.release(global_id="m-2").hold.status == "expired"
    assert service.release(global_id="m-2").replayed  # counted once

    after = {name: read() for name, read in names.items()}
    delta = {name: after[name] - before[name] for name in names}
    assert delta == {
        "pos_hold_ok": 2,
        "pos_hold_time": 2,
        "pos_invoice_err": 2,
        "failed_api": 1,
        "failed_worker": 1,
        "invoiced": 0,  # the worker's retry is no invoice call
        "lapsed": 1,
    }


class ReleasesByHand(PosAdapter):
    """A POS whose holds do not lapse by themselves: the worker releases lapsed holds in it.
    Its releases fail while ``failing``; ``during_release`` runs inside the next one, once."""

    def __init__(self) -> None:
        self.failing = False
        self.during_release: Callable[[], object] | None = None

    def hold(self, **kwargs: Any) -> None: ...

    def invoice(self, **kwargs: Any) -> None: ...

    def release(self, **kwargs: Any) -> None:
        run, self.during_release = self.during_release, None
        if run is not None:
            run()
        if self.failing:
            raise errors.PosError("the POS is down")


@pytest.fixture
def by_hand(client: redis.Redis) -> tuple[HoldService, ReleasesByHand, Worker]:
    """A service whose holds lapse after 0.2 s in a POS that needs them released, a worker."""
    adapter = ReleasesByHand()
    ledger = build_service(Settings(api_keys=(API_KEY,)), client=client).ledger
    service = HoldService(ledger, adapter, hold_ttl=0.2, lease=0.2, retry_base=0.001)
    return service, adapter, Worker(service, lease=5, name="w")


def lapses_counted(run: Callable[[], object]) -> dict[str, float]:
    """What ``run`` adds to tevo_hold_holds_lapsed_total, by seen_by."""
    seen_by = ("worker", "release")
    before = [value("tevo_hold_holds_lapsed_total", seen_by=by) for by in seen_by]
    run()
    after = [value("tevo_hold_holds_lapsed_total", seen_by=by) for by in seen_by]
    return {by: a - b for by, a, b in zip(seen_by, after, before, strict=True)}


def lapse(service: HoldService, gid: str) -> None:
    service.hold(remote_id="L1", quantity=1, global_id=gid)
    time.sleep(0.3)  # past hold_ttl: it lapses


def test_a_lapse_the_worker_released_first_counts_once_then_not_at_its_release(
    by_hand: tuple[HoldService, ReleasesByHand, Worker],
) -> None:
    """The worker releases the lapsed hold in the POS (seen_by=worker); TEvo's release of it
    later turns it expired, and counted the same lapse again (seen_by=release)."""
    service, _, worker = by_hand

    def run() -> None:
        lapse(service, "lapse-1")
        assert worker.run_once() == 1
        assert service.release(global_id="lapse-1").hold.status == "expired"
        assert service.release(global_id="lapse-1").replayed

    assert lapses_counted(run) == {"worker": 1, "release": 0}


def test_a_lapse_tevo_released_first_counts_once_when_the_worker_retries_its_pos_release(
    by_hand: tuple[HoldService, ReleasesByHand, Worker],
) -> None:
    """TEvo's release finds the hold lapsed (seen_by=release) but the POS release fails; the
    worker that makes it later counted the lapse again (seen_by=worker)."""
    service, adapter, worker = by_hand

    def run() -> None:
        lapse(service, "lapse-2")
        adapter.failing = True
        with pytest.raises(errors.PosError):
            service.release(global_id="lapse-2")
        adapter.failing = False
        time.sleep(0.3)  # the release's lease ends: the worker's POS release is due
        assert worker.run_once() == 1

    assert lapses_counted(run) == {"worker": 0, "release": 1}


def test_a_lapse_tevo_releases_during_the_workers_pos_release_counts_once(
    by_hand: tuple[HoldService, ReleasesByHand, Worker],
) -> None:
    """The worker claims the lapsed hold, TEvo's release comes while its POS call runs: the
    release finds the lapse first, and the worker, seeing it expired, counted it again."""
    service, adapter, worker = by_hand

    def run() -> None:
        lapse(service, "lapse-3")
        adapter.during_release = lambda: service.release(global_id="lapse-3")
        assert worker.run_once() == 1
        assert adapter.during_release is None  # it ran
        assert service.get(global_id="lapse-3").status == "expired"

    assert lapses_counted(run) == {"worker": 0, "release": 1}


def test_a_lapse_of_the_reference_inventory_counts_once(
    make_service: Callable[..., HoldService],
) -> None:
    """Its holds lapse by themselves (on the fused and the step-by-step paths): the worker has
    nothing to release, and the release that finds the hold lapsed counts it, once."""
    service = make_service(hold_ttl=0.2)
    service.adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]

    def run() -> None:
        lapse(service, "lapse-4")
        assert Worker(service, name="w").run_once() == 0
        assert service.release(global_id="lapse-4").hold.status == "expired"
        assert service.release(global_id="lapse-4").replayed

    assert lapses_counted(run) == {"worker": 0, "release": 1}


# -- the worker's backlog in /metrics -------------------------------------------------------------


def backlog_in(http: FlaskClient) -> dict[str, float]:
    """The backlog gauges that GET /metrics answers now."""
    text = http.get("/metrics").get_data(as_text=True)
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tevo_hold_due_")
    }


def test_due_work_is_in_metrics_with_its_age_until_a_worker_does_it(
    service: HoldService, http: FlaskClient
) -> None:
    """Two claims whose requests died: their compensations are due at the lease's end, work for
    the worker. /metrics counts them and how long the oldest has waited, until a worker has done
    them (each reading serves for a second)."""
    # the readings' age by a clock of the test's own: the worker's round between the two
    # readings below took more than the second a reading serves on a busy machine
    now = [0.0]
    collector = http.application.extensions["tevo_hold"].backlog
    collector.clock = lambda: now[0]
    for n in (1, 2):
        service.ledger.claim_hold(f"bk-{n}", "L1", 1, ttl=60, lease=0.05, token="t", actor="t")
    time.sleep(0.3)
    waiting = backlog_in(http)
    assert waiting["tevo_hold_due_items"] == 2
    assert 0.2 <= waiting["tevo_hold_due_oldest_seconds"] < 10

    assert Worker(service).run_once() == 2  # both compensated
    now[0] = metrics.BACKLOG_MAX_AGE * 0.9
    assert backlog_in(http) == waiting  # the reading of a moment ago
    now[0] = metrics.BACKLOG_MAX_AGE  # a second after it
    done = {"tevo_hold_due_items": 0.0, "tevo_hold_due_oldest_seconds": 0.0}
    assert backlog_in(http) == done  # read again, empty


def test_work_a_worker_has_taken_or_not_yet_due_is_no_backlog(service: HoldService) -> None:
    service.ledger.claim_hold("later", "L1", 1, ttl=60, lease=60, token="t", actor="t")
    service.ledger.claim_hold("taken", "L1", 1, ttl=60, lease=0.01, token="t", actor="t")
    time.sleep(0.05)
    [item] = service.ledger.due_items()
    assert service.ledger.claim_due(item, "worker-token", lease=60) is not None
    assert service.ledger.backlog() == Backlog(items=0, oldest_seconds=0.0)


def test_a_flood_of_scrapes_reads_the_backlog_once_per_max_age() -> None:
    reads: list[int] = []

    def read() -> Backlog:
        reads.append(1)
        return Backlog(items=3, oldest_seconds=1.5)

    collector = metrics.BacklogCollector(read, max_age=60)
    for _ in range(100):
        body, _ = metrics.exposition(collector)
    assert len(reads) == 1
    assert b"tevo_hold_due_items 3.0" in body
    assert b"tevo_hold_due_oldest_seconds 1.5" in body


def get_without_redis(path: str) -> TestResponse:
    """GET ``path`` of an app whose Redis does not answer (nothing listens on its port)."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2)
    service = build_service(settings)
    http = create_app({"TEVO_HOLD_API_KEYS": "k", "TESTING": True}, service=service)
    try:
        return http.test_client().get(path)
    finally:
        service.close()


def test_metrics_without_redis_answer_200_without_the_backlog() -> None:
    resp = get_without_redis("/metrics")
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert "tevo_hold_http_requests_total" in text
    assert "tevo_hold_due_" not in text


# -- /readyz -------------------------------------------------------------------------------------


def test_readyz_answers_200_with_its_checks_without_a_key(http: FlaskClient) -> None:
    resp = http.get("/readyz")
    assert resp.status_code == 200
    assert resp.json == {
        "status": "ok",
        "store": "redis",
        "checks": {"redis": "ok", "pos": "unknown"},
    }


def test_readyz_in_the_embedded_mode_says_the_store_is_memory_not_redis() -> None:
    """There is no Redis to check: "redis": "ok" said so of one that does not exist."""
    app = create_app({"TEVO_HOLD_REDIS_URL": "memory://", "TESTING": True})
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok", "store": "memory", "checks": {"pos": "unknown"}}


def test_readyz_answers_503_json_when_redis_does_not_answer() -> None:
    resp = get_without_redis("/readyz")
    assert resp.status_code == 503
    assert resp.mimetype == "application/problem+json"
    assert resp.json is not None
    assert resp.json["code"] == "unavailable"
    assert resp.json["checks"] == {"redis": "unavailable", "pos": "unknown"}
    assert "Retry-After" in resp.headers


class Pos(PosAdapter):
    def __init__(self, answer: bool | Exception | None) -> None:
        self.answer = answer

    def hold(self, **kwargs: Any) -> None: ...

    def release(self, **kwargs: Any) -> None: ...

    def invoice(self, **kwargs: Any) -> None: ...

    def ready(self) -> bool | None:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "status", "pos"),
    [
        (True, 200, "ok"),
        (None, 200, "unknown"),
        (False, 503, "unavailable"),
        (OSError(), 503, "unavailable"),
    ],
)
def test_readyz_asks_the_pos_when_its_adapter_can_tell(
    service: HoldService, answer: bool | Exception | None, status: int, pos: str
) -> None:
    app = create_app(
        {"TEVO_HOLD_API_KEYS": "k", "TESTING": True},
        service=HoldService(service.ledger, Pos(answer)),
    )
    resp = app.test_client().get("/readyz")
    assert resp.status_code == status
    assert resp.json is not None and resp.json["checks"] == {"redis": "ok", "pos": pos}


class SlowPos(Pos):
    """A POS whose ready() counts its calls, then answers ``answer`` once ``go`` is set (or
    after 10 s: the old /readyz, which waited for it, then answered)."""

    def __init__(self, answer: bool = True, *, go: bool = False) -> None:
        super().__init__(answer)
        self.calls = 0
        self.entered = threading.Event()
        self.go = threading.Event()
        if go:
            self.go.set()
        self._lock = threading.Lock()

    def ready(self) -> bool | None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        self.go.wait(10)
        return super().ready()


def readiness_app(
    service: HoldService, pos: PosAdapter, budget: str = "30"
) -> tuple[Flask, list[float]]:
    """An app asking ``pos`` for /readyz, whose readiness reads the clock it returns (frozen
    until a test moves it: a reading then serves for as long as the test says)."""
    config = {"TEVO_HOLD_API_KEYS": "k", "TEVO_HOLD_POS_BUDGET": budget, "TESTING": True}
    app = create_app(config, service=HoldService(service.ledger, pos))
    now = [0.0]
    app.extensions["tevo_hold"].readiness.clock = lambda: now[0]
    return app, now


def test_a_flood_of_readyz_makes_one_pos_call_not_one_each(service: HoldService) -> None:
    """/readyz needs no key and no rate limit, and asked the POS on every request: a flood of
    anonymous ones was as many POS calls, each holding a server thread for the POS's answer
    time (TEvo's holds waited 9 s behind 40 flooding threads). One run of the checks at a time
    now, its reading served to every request for a second."""
    pos = SlowPos()
    app, _ = readiness_app(service, pos)
    answers: list[int] = []

    def probe() -> None:
        answers.append(app.test_client().get("/readyz").status_code)

    threads = [threading.Thread(target=probe) for _ in range(20)]
    for thread in threads:
        thread.start()
    assert pos.entered.wait(10)
    pos.go.set()
    for thread in threads:
        thread.join(30)
    assert answers == [200] * 20
    assert pos.calls == 1
    for _ in range(20):  # and after it, while the reading is fresh
        assert app.test_client().get("/readyz").status_code == 200
    assert pos.calls == 1


def readiness_runs_end() -> None:
    """Wait for the runs of readiness checks under way in this process to end."""
    for thread in threading.enumerate():
        if thread.name == "tevo-hold-readyz":
            thread.join(10)


def test_readyz_sees_the_pos_go_down_once_its_reading_is_a_second_old(
    service: HoldService,
) -> None:
    pos = SlowPos(go=True)
    app, now = readiness_app(service, pos)
    http = app.test_client()
    assert http.get("/readyz").status_code == 200
    pos.answer = False
    assert http.get("/readyz").status_code == 200  # the reading of a moment ago
    now[0] += web.READINESS_MAX_AGE
    pos.go.clear()
    pos.entered.clear()
    # requests keep coming: the reading a second old answers while a new run asks the POS
    assert http.get("/readyz").status_code == 200
    assert pos.entered.wait(10)
    pos.go.set()
    readiness_runs_end()
    down = http.get("/readyz")
    assert down.status_code == 503
    assert down.json is not None and down.json["checks"] == {"redis": "ok", "pos": "unavailable"}
    assert pos.calls == 2
    # after a lull (a load balancer asking every few seconds) the request waits for the POS
    pos.answer = True
    now[0] += 2 * web.READINESS_MAX_AGE
    assert http.get("/readyz").status_code == 200
    assert pos.calls == 3


def test_a_pos_that_hangs_holds_readyz_no_longer_than_the_pos_budget(
    service: HoldService,
) -> None:
    """The check's run is a thread of its own: a request waits for it until the POS budget
    after it began, then says the POS is unavailable; later ones answer so at once, and no
    second call goes out while the first hangs."""
    pos = SlowPos()
    app, _ = readiness_app(service, pos, budget="0.2")
    app.extensions["tevo_hold"].readiness.clock = time.monotonic
    http = app.test_client()
    try:
        for _ in range(3):
            resp = http.get("/readyz")
            assert resp.status_code == 503
            assert resp.json is not None
            assert resp.json["checks"] == {"redis": "ok", "pos": "unavailable"}
        assert pos.calls == 1
    finally:
        pos.go.set()
    readiness_runs_end()
    assert http.get("/readyz").status_code == 200  # the POS answered in the end


class HangsOnce(SlowPos):
    """A POS whose first ready() hangs until ``go`` is set; every later one answers at once."""

    def ready(self) -> bool | None:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        self.entered.set()
        if first:
            self.go.wait(10)
        return self.answer


def test_a_readiness_check_that_hung_once_is_given_up_and_asked_again(
    service: HoldService,
) -> None:
    """A run that hung kept every later /readyz answering from it: 503 for good, although the
    POS answered at once again. A reading's age after its deadline, it is given up."""
    pos = HangsOnce()
    app, now = readiness_app(service, pos, budget="0.2")
    http = app.test_client()
    try:
        assert http.get("/readyz").status_code == 503  # waited the budget for the hung call
        now[0] = 0.2 + web.READINESS_MAX_AGE / 2
        assert http.get("/readyz").status_code == 503 and pos.calls == 1  # not yet given up
        now[0] = 0.2 + web.READINESS_MAX_AGE
        again = http.get("/readyz")
        assert again.status_code == 200, again.json
        assert pos.calls == 2
    finally:
        pos.go.set()
    readiness_runs_end()
    assert http.get("/readyz").status_code == 200  # the late answer of the hung run changes nothing


def test_readyz_calls_the_pos_health_path_once_for_many_requests(service: HoldService) -> None:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None: ...

    with http_server(Handler) as base:
        adapter = HttpPosAdapter(base, health_path="/health", timeout=1)
        try:
            app, now = readiness_app(service, adapter)
            http = app.test_client()
            assert {http.get("/readyz").status_code for _ in range(50)} == {200}
            assert hits == ["/health"]
            now[0] += web.READINESS_MAX_AGE
            assert {http.get("/readyz").status_code for _ in range(50)} == {200}
            readiness_runs_end()
            assert hits == ["/health"] * 2
        finally:
            adapter.close()


@pytest.fixture
def pos_health() -> Iterator[tuple[str, list[int]]]:
    """A POS on a loopback port whose GET /health answers the status at the list's end."""
    statuses = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[-1] if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None: ...

    with http_server(Handler) as url:
        yield url, statuses


def test_the_http_adapter_tells_readiness_from_its_health_path(
    pos_health: tuple[str, list[int]],
) -> None:
    base, statuses = pos_health
    adapters = [
        HttpPosAdapter(base, health_path="/health", timeout=1),
        HttpPosAdapter(base, timeout=1),
        HttpPosAdapter(f"http://127.0.0.1:{free_port()}", health_path="/health", timeout=0.5),
    ]
    try:
        up, unknown, unreachable = adapters
        assert up.ready() is True
        statuses.append(503)
        assert up.ready() is False
        assert unknown.ready() is None
        assert unreachable.ready() is False
    finally:
        for adapter in adapters:
            adapter.close()


# -- the log handler -----------------------------------------------------------------------------


def _read_slowly(fd: int) -> bytes:
    """All a pipe brings until it closes, a little at a time: the writers find it full."""
    chunks = []
    while chunk := os.read(fd, 1024):
        chunks.append(chunk)
        time.sleep(0.0002)
    return b"".join(chunks)


def test_the_line_handler_writes_whole_lines_from_many_threads() -> None:
    """Sixteen threads log at once into one pipe that a slow reader keeps full, so a line
    longer than a pipe's atomic write goes out in parts: every line still arrives whole."""
    read_fd, write_fd = os.pipe()
    handler = LineHandler(write_fd)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tevo_hold.test_line_handler")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    reader = threading.Thread(target=lambda: received.append(_read_slowly(read_fd)))
    received: list[bytes] = []
    reader.start()
    long = "x" * (PIPE_BUF * 3)

    def emit(t: int) -> None:
        for n in range(200):
            log.info("line %d %d %s", t, n, long if n == 100 else "票")

    try:
        threads = [threading.Thread(target=emit, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        log.removeHandler(handler)
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    lines = received[0].decode("utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # each line whole: it parses
    assert len(entries) == 16 * 200
    assert {e["message"].split()[1] for e in entries} == {str(t) for t in range(16)}
    assert sum(e["message"].endswith(long) for e in entries) == 16


def test_the_line_handler_reports_a_failed_write_and_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)  # a closed descriptor: every write fails
    handler = LineHandler(write_fd)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "lost", (), None)
    handler.handle(record)  # does not raise: logging reports it on stderr
    assert "Logging error" in capsys.readouterr().err


class Writes:
    """A LineHandler's write(2) calls, recorded (each one's bytes) instead of made."""

    def __init__(self, handler: LineHandler) -> None:
        self.calls: list[bytes] = []
        handler._write = self.calls.append  # type: ignore[method-assign,assignment]

    def lines(self) -> list[str]:
        return [json.loads(line)["message"] for call in self.calls for line in call.splitlines()]


def _logger_with(handler: LineHandler, name: str) -> logging.Logger:
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_a_line_handler_with_a_flush_interval_gathers_lines_into_whole_pipe_writes() -> None:
    handler = LineHandler(1, flush_interval=60)  # no timed flush within this test
    writes = Writes(handler)
    log = _logger_with(handler, "tevo_hold.test_gathered")
    for n in range(100):
        log.info("line %d %s", n, "x" * 50)
    assert writes.calls, "written as the gathered lines fill PIPE_BUF"
    assert all(len(call) <= PIPE_BUF and call.endswith(b"\n") for call in writes.calls)
    assert len(writes.calls) < 100 / 5  # many lines per write
    handler.flush()
    assert writes.lines() == [f"line {n} {'x' * 50}" for n in range(100)]


def test_gathered_lines_are_never_split_nor_joined_past_pipe_buf() -> None:
    """A write of gathered lines is at most PIPE_BUF bytes of whole lines; a line longer than
    that alone (it cannot be whole, but it takes no other line with it)."""
    handler = LineHandler(1, flush_interval=60)
    writes = Writes(handler)
    log = _logger_with(handler, "tevo_hold.test_not_split")
    sizes = [10, 3000, 1500, 5000, 4000, 100, 2000, 2000, 9000, 1, 4070, 30] * 5
    for n, size in enumerate(sizes):
        log.info("%d %s", n, "y" * size)
    handler.flush()
    for call in writes.calls:
        lines = call.splitlines(keepends=True)
        assert call.endswith(b"\n")
        assert len(call) <= PIPE_BUF or len(lines) == 1
    assert writes.lines() == [f"{n} {'y' * size}" for n, size in enumerate(sizes)]


def test_a_warning_is_written_at_once_after_the_lines_gathered_before_it() -> None:
    handler = LineHandler(1, flush_interval=60)
    writes = Writes(handler)
    log = _logger_with(handler, "tevo_hold.test_warning")
    log.info("first")
    log.info("second")
    assert writes.calls == []
    log.warning("third")
    assert writes.lines() == ["first", "second", "third"]
    assert len(writes.calls) == 2  # the gathered lines in one write, the warning in its own


def test_gathered_lines_are_written_within_the_flush_interval() -> None:
    handler = LineHandler(1, flush_interval=0.05)
    writes = Writes(handler)
    log = _logger_with(handler, "tevo_hold.test_interval")
    log.info("waits for the thread")
    deadline = time.monotonic() + 5
    while not writes.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writes.lines() == ["waits for the thread"]


def test_a_forked_child_does_not_write_its_parents_gathered_lines() -> None:
    read_fd, write_fd = os.pipe()
    handler = LineHandler(write_fd, flush_interval=60)
    log = _logger_with(handler, "tevo_hold.test_fork")
    log.info("the parent's")
    pid = os.fork()
    if pid == 0:
        try:
            log.info("the child's")
            handler.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    handler.flush()
    os.close(write_fd)
    text = _read_slowly(read_fd).decode()
    os.close(read_fd)
    assert [json.loads(line)["message"] for line in text.splitlines()] == [
        "the child's",
        "the parent's",
    ]


# -- the flushing threads ----------------------------------------------------------------------


def _thread_start_fails_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """threading.Thread.start raising as at a process's limit of threads, the first time a
    thread named ``name`` starts; the names of the threads it refused."""
    refused: list[str] = []
    start = threading.Thread.start

    def fail_once(thread: threading.Thread) -> None:
        if not refused and thread.name == name:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", fail_once)
    return refused


def test_a_flusher_whose_thread_does_not_start_flushes_inline_and_tries_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flushed: list[str] = []
    flusher = Flusher("test-flusher", 60, lambda: flushed.append("flushed"))
    refused = _thread_start_fails_once(monkeypatch, "test-flusher")
    with caplog.at_level(logging.ERROR, logger="tevo_hold._flusher"):
        flusher.start()  # does not raise
        assert refused == ["test-flusher"]
        assert flusher.running is False  # not a thread that is not there
        assert flushed == ["flushed"]  # the caller's item went out all the same
        flusher.start()  # the next item: the thread starts now
    assert flusher.running is True
    assert flushed == ["flushed"]  # the thread flushes from now on (in 60 s)
    assert [r.getMessage() for r in caplog.records] == [
        "test-flusher: its thread did not start (can't start new thread): "
        "flushing in the callers until it does"
    ]


def test_a_failed_start_is_logged_once_however_often_it_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flushed: list[int] = []
    flusher = Flusher("test-flusher-never", 60, lambda: flushed.append(1))

    def never(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", never)
    with caplog.at_level(logging.ERROR, logger="tevo_hold._flusher"):
        for _ in range(5):
            flusher.start()
    assert (flusher.running, len(flushed), len(caplog.records)) == (False, 5, 1)


def test_a_hold_is_answered_and_logged_when_the_access_log_thread_does_not_start(
    stocked: FlaskClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the request that found the thread missing got a 500 for a hold that was made, and
    no access line came out again until the backlog (10,000 requests) was full."""
    caplog.set_level(logging.INFO, logger="tevo_hold.access")
    fresh = Flusher("tevo-hold-access-log", 60, observability.flush_access_log)
    monkeypatch.setattr(observability, "_ACCESS_FLUSHER", fresh)
    refused = _thread_start_fails_once(monkeypatch, "tevo-hold-access-log")
    answer = stocked.post("/v1/holds", json=HOLD, headers={**AUTH, "X-Request-ID": "no-thread"})
    assert answer.status_code == 201
    assert refused == ["tevo-hold-access-log"]
    # logged before the answer returned, by the request itself: no thread runs to do it
    logged = [getattr(r, "fields", {}).get("request_id") for r in caplog.records]
    assert "no-thread" in logged


def test_closing_a_batching_handler_writes_its_lines_and_ends_its_thread(tmp_path) -> None:
    """logging.config closes the handlers it replaces (gunicorn's SIGHUP runs it again): each
    closed LineHandler's thread used to live on, one more in the master per reload."""
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    handler = LineHandler(fd, flush_interval=0.01)
    handler.setFormatter(JsonFormatter())
    before = {t for t in threading.enumerate() if t.name == "tevo-hold-log"}
    try:
        handler.handle(logging.makeLogRecord({"msg": "gathered", "levelno": logging.INFO}))
        (thread,) = {t for t in threading.enumerate() if t.name == "tevo-hold-log"} - before
        handler.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert "gathered" in path.read_text()
        handler.handle(logging.makeLogRecord({"msg": "after", "levelno": logging.INFO}))
        assert {t for t in threading.enumerate() if t.name == "tevo-hold-log"} == before
    finally:
        os.close(fd)
