"""The docs: the MkDocs build (strict), the guides' examples run for real, the reference page in a
real browser.

- The build runs here, strict, so a broken link, anchor or generated table fails the tests.
- Every ``curl`` example of the TEvo integration guide runs, in order, against a fresh demo server
  (gunicorn, the sample inventory, the demo key), and must answer the status, headers and body the
  guide prints right after it (times apart).
- The Python examples of the POS vendor guide run, in order, on a real redis-server; the app they
  build then serves a hold and an invoice through the guide's own adapter.
- ``GET /docs`` is opened in headless Chromium with every host but this machine unresolvable, so a
  page that needed a CDN would come up empty: it must list the operations.

Chromium: the test runs the ``chromium`` found on PATH (Debian's package, which ``make test``
installs where missing), or the browser that the ``CHROMIUM`` environment variable names.
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import inspect
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tevo_hold import HoldService, KeySpace, Ledger, PosAdapter, build_service, errors
from tevo_hold.models import HoldStatus
from tevo_hold.openapi import OPERATIONS
from tevo_hold.settings import PREFIX, Settings
from tevo_hold.web import SERVER_PROBLEMS
from tevo_hold.worker import Worker

from .acme_pos import acme_pos
from .recording_pos import RecordingPos
from .servers import ROOT, free_port, gunicorn_server, http_server, redis_server

DOCS = ROOT / "docs"
DEMO_KEY = "demo-key"
TIMES = {"created_at", "expires_at", "invoiced_at", "released_at", "at"}
_FUTURE = datetime(2030, 1, 1, tzinfo=UTC)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a page: (language, text)."""
    return [(m[1], m[2]) for m in FENCE.finditer(page.read_text("utf-8"))]


# -- the build ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tevo-hold-site-") as out:
        build = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", out],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert build.returncode == 0, build.stdout + build.stderr
        yield Path(out)


def test_the_site_builds_strictly_with_every_guide(site: Path) -> None:
    for page in ("index.html", "tevo-integration/index.html", "pos-vendors/index.html"):
        assert (site / page).is_file(), page
    assert (site / "operations" / "index.html").is_file()
    assert (site / "openapi.json").read_bytes() == (DOCS / "openapi.json").read_bytes()


def test_the_integration_guide_has_every_code_of_every_endpoint(site: Path) -> None:
    html = (site / "tevo-integration" / "index.html").read_text("utf-8")
    assert "<!-- tevo-hold:" not in html
    for op in OPERATIONS:
        heading = re.escape(f"<code>{op.method.upper()} {op.path}</code>")
        section = re.search(rf"<h3 [^>]*>{heading}.*?</h3>(.*?)<h[23] ", html, re.DOTALL)
        assert section, op.path
        for answer in op.answers:
            row = f"<td>{answer.status}</td>\n<td><code>{answer.code}</code></td>"
            assert row in section[1], (op.operation_id, answer.code)
    for cls in (errors.HoldExpired, errors.MethodNotAllowed, errors.PosTimeout):
        assert f"<code>{cls.code}</code>" in html
    # what the HTTP server answers by itself, in its own table, in the README's too
    section = re.search(
        r"<h3 [^>]*>Requests the server cannot read.*?</h3>(.*?)<h[23] ", html, re.DOTALL
    )
    assert section
    readme = (ROOT / "README.md").read_text("utf-8")
    for problem in SERVER_PROBLEMS:
        assert f"<td>{problem.status}</td>\n<td><code>{problem.code}</code></td>" in section[1]
        assert f"| {problem.status} | `{problem.code}` |" in readme


def test_the_operations_guide_lists_every_setting(site: Path) -> None:
    html = (site / "operations" / "index.html").read_text("utf-8")
    for name in Settings.__dataclass_fields__:
        assert f"<code>{PREFIX}{name.upper()}</code>" in html
    assert "maxmemory-policy noeviction" in html


def test_no_guide_puts_a_secret_of_tevo_hold_check_in_its_command_line() -> None:
    """The guides showed ``tevo-hold check ... --api-key "$KEY" --redis-url "$URL"``: the key and
    the Redis password in argv, readable by any user of the host (``/proc/PID/cmdline``) while
    it runs. The command reads both from the environment instead (TEVO_HOLD_CHECK_API_KEY,
    TEVO_HOLD_REDIS_URL); a literal demo key (the README's quick start) is no secret."""
    secret_argument = re.compile(r"--(?:api-key|redis-url)[ =]\"?\$")
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        text = page.read_text("utf-8")
        assert not secret_argument.search(text), (page.name, secret_argument.findall(text))
    for page in (DOCS / "operations.md", DOCS / "pos-vendors.md"):
        assert "TEVO_HOLD_CHECK_API_KEY" in page.read_text("utf-8"), page.name


def test_no_guide_sets_a_short_api_key() -> None:
    """The guides set ``TEVO_HOLD_API_KEYS=key-for-tevo``, a guessable key copied as it is,
    which nothing throttles the guessing of. A key they write out is 32 characters or more
    (the start warns of shorter ones); better, one made on the spot or read from elsewhere."""
    literal = re.compile(
        r"""TEVO_HOLD_API_KEYS(?:=|"\]\s*=\s*)(?P<quote>["']?)(?P<key>[^"'\s$][^"'\s]*)(?P=quote)"""
    )
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for found in literal.finditer(page.read_text("utf-8")):
            key = found["key"]
            if key.startswith("os.environ"):
                continue
            assert len(key) >= 32, (page.name, key)


def test_the_integration_guide_says_429_is_retried_after_retry_after() -> None:
    """The guide once had Retry-After come with 409 and 503 only, and its Retries table put 429
    under "any other 4xx: do not retry unchanged", though the server sends Retry-After on it
    and the call then goes through unchanged."""
    guide = (DOCS / "tevo-integration.md").read_text("utf-8")
    header = guide.split("Two headers matter")[1].split("\n\n")[0]
    for answer in ("409 request_in_progress", "429 rate_limited", "503 unavailable"):
        assert f"`{answer}`" in header, header
    table = guide.split("## Retries")[1].split("\n\n")[2]
    rows = [row for row in table.splitlines() if row.startswith("| `429")]
    assert len(rows) == 1 and "Retry-After" in rows[0] and "same body" in rows[0], table
    assert table.index("| `429") < table.index("| any other `4xx`")


def test_the_integration_guide_tells_which_failed_hold_a_release_finds() -> None:
    """The guide once said a hold that answered 502 is released at once (200), though after a
    plain refusal by the POS nothing was recorded and the release answers 404 hold_not_found."""
    guide = " ".join((DOCS / "tevo-integration.md").read_text("utf-8").split())
    bullet = guide.split("- on a **hold**:")[1].split("- on a **release**")[0]
    assert "A hold that answered `502` or `504` is released at once" not in bullet
    assert "`502` from a POS that failed" in bullet and "the POS refused it" in bullet, bullet


# -- the TEvo guide's curl examples -------------------------------------------------------------


def _curl_examples() -> list[tuple[str, str]]:
    """Each ``curl`` command of the integration guide, with the answer printed after it."""
    blocks = _blocks(DOCS / "tevo-integration.md")
    examples = []
    for (lang, text), (next_lang, answer) in itertools.pairwise(blocks):
        if lang == "sh" and text.startswith("curl "):
            assert next_lang == "http", f"no answer printed after: {text}"
            examples.append((text, answer))
    return examples


def _parse_http(text: str) -> tuple[int, dict[str, str], Any]:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body) if body.strip() else None


def _same_body(documented: Any, actual: Any) -> bool:
    if isinstance(documented, list) and isinstance(actual, list):
        return len(documented) == len(actual) and all(
            _same_body(d, a) for d, a in zip(documented, actual, strict=True)
        )
    if not isinstance(documented, dict) or not isinstance(actual, dict):
        return bool(documented == actual)
    if documented.keys() != actual.keys():
        return False
    for key, value in documented.items():
        if key in TIMES:
            if (value is None) != (actual[key] is None):
                return False
        elif not _same_body(value, actual[key]):
            return False
    return True


@pytest.mark.slow
def test_the_curl_examples_answer_as_the_guide_says() -> None:
    examples = _curl_examples()
    assert len(examples) >= 8
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: `make test` installs it (apt-get install curl)")
    with gunicorn_server({}, workers=1, threads=4) as base:  # the demo: memory, sample inventory
        env = {**os.environ, "BASE": base, "KEY": DEMO_KEY}
        for command, printed in examples:
            run = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=30
            )
            assert run.returncode == 0, (command, run.stderr)
            status, headers, body = _parse_http(run.stdout)
            want_status, want_headers, want_body = _parse_http(printed)
            assert status == want_status, (command, run.stdout)
            for name, value in want_headers.items():
                assert headers.get(name) == value, (command, name, run.stdout)
            assert _same_body(want_body, body), (command, run.stdout)


# -- the vendor guide's Python examples ---------------------------------------------------------


@pytest.mark.slow
def test_the_vendor_guide_examples_run_and_serve_through_their_adapter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = [text for lang, text in _blocks(DOCS / "pos-vendors.md") if lang == "python"]
    assert len(code) >= 4
    secret = secrets.token_urlsafe(32)  # the guide reads the key from the environment
    monkeypatch.setenv("TEVO_HOLD_API_KEYS", secret)
    with redis_server() as url:
        namespace: dict[str, Any] = {"__name__": "pos_vendors_guide"}
        for block in code:
            exec(compile(block.replace("redis://localhost:6379/0", url), "pos-vendors.md", "exec"),
                 namespace)  # fmt: skip
        app, adapter = namespace["app"], namespace["adapter"]
        assert type(adapter).__name__ == "DictPos"
        http = app.test_client()
        key = {"X-API-Key": secret}
        body = {"remote_id": "demo-1", "quantity": 3, "global_id": "guide-1"}
        assert http.post("/tevo/v1/holds", json=body, headers=key).status_code == 201
        assert adapter.holds == {"guide-1": ("demo-1", 3)}
        assert http.post("/tevo/v1/holds", json=body, headers=key).status_code == 201  # replay
        sale = {"global_id": "guide-1", "tevo_order_id": 99}
        assert http.post("/tevo/v1/invoices", json=sale, headers=key).status_code == 201
        assert adapter.stock == {"demo-1": 7}
        assert adapter.sales == {"guide-1": 99}
        too_many = {"remote_id": "demo-1", "quantity": 8, "global_id": "guide-2"}
        refused = http.post("/tevo/v1/holds", json=too_many, headers=key)
        assert refused.get_json()["code"] == "insufficient_quantity"
        assert refused.get_json()["available"] == 7
        assert http.get("/tevo/healthz").status_code == 200
        assert http.get("/tevo/v1/openapi.json").get_json()["servers"][0]["url"] == "/tevo"


def _guide_class(name: str) -> Any:
    """A class of the vendor guide, defined by running the one Python block that defines it."""
    [block] = [
        text
        for lang, text in _blocks(DOCS / "pos-vendors.md")
        if lang == "python" and f"\nclass {name}(" in text
    ]
    namespace: dict[str, Any] = {"__name__": "pos_vendors_guide"}
    exec(compile(block, "pos-vendors.md", "exec"), namespace)
    return namespace[name]


def test_the_guide_acme_adapter_tells_tevo_what_happened_and_logs_where(caplog) -> None:
    """A refused connection changed nothing (503 unavailable); a request sent and never
    answered may have (504 pos_timeout). TEvo's message names no address; the log does."""
    acme_class = _guide_class("AcmePosAdapter")
    refused = free_port()
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cases = [(refused, errors.Unavailable), (silent.getsockname()[1], errors.PosTimeout)]
        for port, expected in cases:
            acme = acme_class(f"http://127.0.0.1:{port}", "token", timeout=0.5)
            caplog.clear()
            try:
                with caplog.at_level(logging.WARNING), pytest.raises(expected) as caught:
                    acme.hold(
                        global_id="g1",
                        remote_id="L1",
                        quantity=1,
                        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                    )
            finally:
                acme.close()
            assert "127.0.0.1" not in caught.value.detail and str(port) not in caught.value.detail
            assert f"port={port}" in caplog.text


def test_the_guide_dict_pos_runs_as_it_is() -> None:
    """The guide says its toy adapter runs as it is: its block once lacked the imports of the
    Acme block before it (a NameError on PosAdapter)."""
    dict_pos = _guide_class("DictPos")({"L1": 3})
    dict_pos.hold(global_id="g", remote_id="L1", quantity=2, expires_at=_FUTURE)
    with pytest.raises(errors.InsufficientQuantity):
        dict_pos.hold(global_id="h", remote_id="L1", quantity=2, expires_at=_FUTURE)


def test_the_guide_wires_the_service_with_every_setting_build_service_passes() -> None:
    """A vendor who builds the service by hand as the guide shows must get the settings the
    server would use: the guide's call once left out retry_base and retry_cap, so that
    TEVO_HOLD_RETRY_* were ignored."""

    def keywords(source: str) -> set[str]:
        [call] = [
            node
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "HoldService"
        ]
        return {k.arg for k in call.keywords if k.arg is not None}

    [wiring] = [
        text
        for lang, text in _blocks(DOCS / "pos-vendors.md")
        if lang == "python" and "HoldService(" in text
    ]
    expected = keywords(textwrap.dedent(inspect.getsource(build_service))) - {"fuse"}
    assert expected >= {"hold_ttl", "lease", "retry_base", "retry_cap"}
    assert keywords(wiring) == expected


def test_the_contract_says_calls_overlap_for_one_global_id_and_they_do() -> None:
    """The adapter's contract once never said that it is called concurrently, for one global_id
    too, so a POS whose idempotency was "look for a sale, then make one" in two steps sold twice.
    The contract and the guide say it now; here is one overlap they name: a hold slower than
    its lease, and TEvo's retry that took it over while the first call still ran."""
    guide = " ".join((DOCS / "pos-vendors.md").read_text("utf-8").split())
    contract = " ".join((PosAdapter.__doc__ or "").split())
    assert "Calls come concurrently, for one `global_id` too." in guide
    assert "Calls are concurrent, for one ``global_id`` too." in contract
    for text in (guide, contract):
        assert "thread-safe" in text and "atomic" in text and "sells twice" in text

    running: list[str] = []
    overlaps: list[tuple[str, str]] = []
    first_started, first_may_end = threading.Event(), threading.Event()

    class SlowFirstHold(RecordingPos):
        def __init__(self) -> None:
            self.calls = []

        def hold(
            self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime
        ) -> None:
            overlaps.extend(("hold", other) for other in running if other == global_id)
            running.append(global_id)
            try:
                if not first_started.is_set():
                    first_started.set()
                    first_may_end.wait(30)
            finally:
                running.remove(global_id)

    ledger = Ledger(fakeredis.FakeRedis(server=fakeredis.FakeServer()), keys=KeySpace("overlap"))
    service = HoldService(ledger, SlowFirstHold(), lease=0.2)

    def first_call() -> None:
        with contextlib.suppress(errors.TevoHoldError):  # its outcome is not the point
            service.hold(remote_id="L1", quantity=1, global_id="g")

    first = threading.Thread(target=first_call)
    first.start()
    try:
        assert first_started.wait(30)
        while True:  # TEvo's retry, until the first call's lease has ended and it takes over
            try:
                service.hold(remote_id="L1", quantity=1, global_id="g")
                break
            except errors.RequestInProgress:
                first_may_end.wait(0.05)
    finally:
        first_may_end.set()
        first.join(30)
    assert overlaps == [("hold", "g")]


def _acme_service(url: str, **overrides: Any) -> HoldService:
    """A service on fakeredis whose adapter is the guide's AcmePosAdapter, calling ``url``."""
    acme = _guide_class("AcmePosAdapter")(url, "token", timeout=2.0)
    ledger = Ledger(fakeredis.FakeRedis(server=fakeredis.FakeServer()), keys=KeySpace("acme"))
    return HoldService(ledger, acme, **overrides)


def test_the_guide_acme_adapter_has_a_hold_the_pos_made_before_a_5xx_released() -> None:
    """A 5xx may come after the POS acted (its gateway gave up on it): the guide's adapter once
    made it a plain PosError, so the hold was forgotten at once and its tickets stayed held in
    the POS, with nothing left to release them (TEvo's release answered 404)."""
    with acme_pos({"L1": 10}) as (url, pos):
        service = _acme_service(url)
        try:
            pos.faults["hold"] = "act_then_fail"
            with pytest.raises(errors.PosError) as failed:
                service.hold(remote_id="L1", quantity=2, global_id="g1")
            assert failed.value.outcome_unknown
            assert pos.holds == {"g1": ("L1", 2)}  # held in the POS, though it answered 502
            assert service.release(global_id="g1").hold.status is HoldStatus.RELEASED
            assert pos.holds == {}
        finally:
            service.close()


def test_the_guide_acme_adapter_tells_a_refusal_from_a_failure() -> None:
    """A 4xx is a refusal (nothing changed); a 5xx may have acted (outcome unknown)."""
    acme_class = _guide_class("AcmePosAdapter")
    for status, unknown in ((400, False), (422, False), (500, True), (502, True), (503, True)):

        class Answering(http.server.BaseHTTPRequestHandler):
            answer = status

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(self.answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

        with http_server(Answering) as url:
            acme = acme_class(url, "token")
            try:
                with pytest.raises(errors.PosError) as failed:
                    acme.hold(global_id="g", remote_id="L1", quantity=1, expires_at=_FUTURE)
            finally:
                acme.close()
        assert failed.value.outcome_unknown is unknown, status


def test_the_guide_acme_adapter_releases_a_hold_the_pos_no_longer_has() -> None:
    """The Acme POS answers 404 to the release of a hold it does not have (lapsed, released
    before, never made). The guide's adapter once made that ListingNotFound, so such a release
    failed for ever: TEvo's release answered 502 each time, and a compensation never finished,
    TEvo's retry of the hold answering 409 request_in_progress for ever."""
    with acme_pos({"L1": 10}) as (url, pos):
        service = _acme_service(url, lease=1)
        try:
            # TEvo releases a hold the POS has let lapse already
            service.hold(remote_id="L1", quantity=2, global_id="lapsed")
            pos.holds.clear()
            assert service.release(global_id="lapsed").hold.status is HoldStatus.RELEASED
            events = service.get(global_id="lapsed", history=True).events
            assert events[-1].event == "pos_released", events  # no POS release due any more
            # a hold call that got no answer, and never reached the POS: compensated, for good
            pos.faults["hold"] = "drop"
            with pytest.raises(errors.PosTimeout):
                service.hold(remote_id="L1", quantity=2, global_id="dropped")
            worker, deadline = Worker(service, lease=5), time.monotonic() + 5
            while not worker.run_once():  # the compensation is due a lease after the timeout
                assert time.monotonic() < deadline, "no compensation"
                time.sleep(0.02)
            assert pos.calls[-1] == ("release", "dropped")
            # the compensation is done: TEvo's retry holds again, never request_in_progress
            retried = service.hold(remote_id="L1", quantity=2, global_id="dropped")
            assert retried.hold.status is HoldStatus.HELD and not retried.replayed
            assert pos.holds == {"dropped": ("L1", 2)}
        finally:
            service.close()


# -- the reference page, in a real browser ------------------------------------------------------


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    pytest.fail(
        "No Chromium found: `make test` installs Debian's chromium where missing "
        "(apt-get install chromium); or set CHROMIUM to a Chrome/Chromium binary."
    )


def _dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory(prefix="tevo-hold-chromium-") as profile:
        run = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                # No host but this machine resolves: a page that needed a CDN would stay empty.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_the_reference_page_lists_the_operations_in_a_real_browser() -> None:
    with gunicorn_server({}, workers=1, threads=4) as base:
        dom = _dump_dom(base + "/docs")
    assert "Failed to load API definition" not in dom
    rendered = set(re.findall(r'id="operations-(?!tag-)[^"]*-(\w+)"', dom))
    assert {"holdInventory", "releaseHold", "invoiceHold"} <= rendered, dom[-3000:]
    assert rendered == {op.operation_id for op in OPERATIONS}
    for op in OPERATIONS:
        assert f'data-path="{op.path}"' in dom
        assert op.summary in dom
