"""Keys, signatures, limits, logs, metrics and readiness through real processes.

gunicorn with 4 workers on a real redis-server, signatures required, 5 requests per minute per
key; the ``tevo-hold`` command (in this process) manages keys in the same Redis. Each request
goes on a fresh connection, so requests spread over the workers; every request's JSON access
line names the worker's pid, which shows that they did.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tevo_hold import RedisInventoryAdapter, Settings, build_service, metrics
from tevo_hold.auth import env_name
from tevo_hold.cli import main

from .redis_dump import everything_in
from .servers import gunicorn_server, redis_server

pytestmark = pytest.mark.slow

BOOT_KEY = "boot-key-from-the-environment"
WORKERS = 4
LISTING = "ops-1"


Sample = tuple[str, tuple[tuple[str, str], ...]]


def sample(name: str, **labels: str) -> Sample:
    """How :meth:`Server.metrics` names a sample."""
    return name, tuple(sorted(labels.items()))


@dataclass
class Server:
    base: str
    log: Path
    #: Every secret sent to the server: none may ever show in its output.
    secrets: list[str] = field(default_factory=lambda: [BOOT_KEY])

    @property
    def host(self) -> str:
        return urlsplit(self.base).hostname or ""

    def call(
        self,
        method: str,
        path: str,
        key: str,
        body: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        signed: bool = True,
    ) -> requests.Response:
        """One request on a fresh connection, signed as the README says (computed here)."""
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"X-API-Key": key, "Connection": "close"}
        if signed:
            message = f"{method} {self.host}{path}?".encode() + data
            digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
            headers["X-Signature"] = base64.b64encode(digest).decode()
            self.secrets.append(headers["X-Signature"])
        if body is not None:
            headers["Content-Type"] = "application/json"
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return requests.request(
            method, self.base + path, data=data or None, headers=headers, timeout=15
        )

    def hold(self, key: str, gid: str, **kw: Any) -> requests.Response:
        body = {"remote_id": LISTING, "quantity": 1, "global_id": gid}
        return self.call("POST", "/v1/holds", key, body, **kw)

    def log_lines(self) -> list[dict[str, Any]]:
        """Every line the server wrote, each parsed as JSON (failing on any that is not)."""
        text = self.log.read_text("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def access(self, request_ids: set[str]) -> list[dict[str, Any]]:
        """The access lines of these requests, once there is one for each (or after 10 s):
        the server logs them in batches, a fraction of a second after its answers."""
        deadline = time.monotonic() + 10
        while True:
            lines = [
                line
                for line in self.log_lines()
                if line.get("logger") == "tevo_hold.access"
                and line.get("request_id") in request_ids
            ]
            if {line["request_id"] for line in lines} >= request_ids:
                return lines
            if time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def metrics(self) -> dict[Sample, float]:
        text = requests.get(self.base + "/metrics", headers={"Connection": "close"}, timeout=15)
        assert text.status_code == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.text)
            for sample in family.samples
        }


def parallel(calls: list[Any]) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    service = build_service(Settings(redis_url=redis_url), client=client)
    assert isinstance(service.adapter, RedisInventoryAdapter)
    service.adapter.set_quantity(LISTING, 1000)
    yield client
    client.close()


@pytest.fixture(scope="module")
def server(
    redis_url: str, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("operations") / "gunicorn.log"
    env = {
        "TEVO_HOLD_REDIS_URL": redis_url,
        "TEVO_HOLD_API_KEYS": BOOT_KEY,
        "TEVO_HOLD_REQUIRE_SIGNATURE": "true",
        "TEVO_HOLD_RATE_LIMIT": "5 per minute",
    }
    with gunicorn_server(env, workers=WORKERS, threads=4, output=log) as base:
        yield Server(base, log)


@pytest.fixture
def cli(redis_url: str) -> CliRunner:
    return CliRunner(env={"TEVO_HOLD_REDIS_URL": redis_url, "TEVO_HOLD_API_KEYS": None})


def create_key(cli: CliRunner, server: Server, name: str) -> str:
    result = cli.invoke(main, ["keys", "create", name])
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip()
    server.secrets.append(plaintext)
    return plaintext


# -- keys ----------------------------------------------------------------------------------------


def test_a_key_made_by_the_command_works_and_its_revocation_holds_on_every_worker_at_once(
    server: Server, cli: CliRunner, redis_client: redis.Redis
) -> None:
    key = create_key(cli, server, "tevo-revoked")
    ids = [f"before-revoke-{n}" for n in range(4)]
    answers = parallel([lambda rid=rid: server.hold(key, rid, request_id=rid) for rid in ids])
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert key.encode() not in everything_in(redis_client)

    revoked = cli.invoke(main, ["keys", "revoke", "tevo-revoked"])
    assert revoked.exit_code == 0, revoked.output
    # Which worker accepts a connection is the kernel's choice: send batches until the refusals
    # came from at least two workers (a busy worker's 8 threads can take a whole batch).
    pids: set[int] = set()
    for batch in range(10):
        ids = [f"after-revoke-{batch}-{n}" for n in range(32)]
        answers = parallel([lambda rid=rid: server.hold(key, rid, request_id=rid) for rid in ids])
        assert {a.status_code for a in answers} == {401}
        assert {a.json()["code"] for a in answers} == {"unauthorized"}
        lines = server.access(set(ids))
        assert len(lines) == len(ids)
        assert {line["key"] for line in lines} == {None}  # refused: no key name
        pids |= {line["pid"] for line in lines}
        if len(pids) >= 2:
            break
    assert len(pids) >= 2, f"320 requests all went to one worker: {pids}"


def test_the_boot_key_of_the_environment_keeps_working(server: Server) -> None:
    resp = server.call("GET", "/v1/holds/nope", BOOT_KEY, request_id="boot-1")
    assert resp.status_code == 404, resp.text
    (line,) = server.access({"boot-1"})
    assert line["key"] == env_name(BOOT_KEY)


# -- signatures ----------------------------------------------------------------------------------


def test_unsigned_and_missigned_requests_are_refused(server: Server, cli: CliRunner) -> None:
    key = create_key(cli, server, "tevo-signing")
    unsigned = server.hold(key, "unsigned", signed=False)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "invalid_signature"
    wrong = server.call(
        "POST",
        "/v1/holds",
        key,
        {"remote_id": LISTING, "quantity": 1, "global_id": "wrong"},
        signed=False,
    )
    assert wrong.status_code == 401
    assert server.hold(key, "signed").status_code == 201


# -- rate limit ----------------------------------------------------------------------------------


def test_the_limit_is_one_budget_per_key_across_the_workers(server: Server, cli: CliRunner) -> None:
    key = create_key(cli, server, "tevo-limited")
    ids = [f"limit-{n}" for n in range(5)]
    answers = parallel([lambda rid=rid: server.hold(key, rid, request_id=rid) for rid in ids])
    assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
    assert len({line["pid"] for line in server.access(set(ids))}) >= 2

    over = server.hold(key, "limit-6")
    assert over.status_code == 429, over.text
    assert over.headers["Content-Type"] == "application/problem+json"
    assert over.json()["code"] == "rate_limited"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    # Another key's budget is untouched.
    other = create_key(cli, server, "tevo-unlimited")
    assert server.hold(other, "limit-other").status_code == 201


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_sum_every_worker(server: Server, cli: CliRunner) -> None:
    healthz = sample(
        "tevo_hold_http_requests_total", endpoint="/healthz", method="GET", status="200"
    )
    held = sample("tevo_hold_holds_total", outcome="held")
    latency = sample(
        "tevo_hold_http_request_duration_seconds_count", endpoint="/v1/holds", method="POST"
    )
    # Every worker's earlier counts flushed: the sums stay the same over two flush intervals
    # (a fixed wait of two was not enough for a busy machine's workers, whose late counts
    # then came into the sums below).
    before = server.metrics()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(metrics.FLUSH_INTERVAL * 2)
        again = server.metrics()
        if all(again.get(s, 0) == before.get(s, 0) for s in (healthz, held, latency)):
            break
        before = again
    answers = parallel([lambda: requests.get(server.base + "/healthz", timeout=15)] * 40)
    assert {a.status_code for a in answers} == {200}
    key = create_key(cli, server, "tevo-metrics")
    assert [server.hold(key, f"metrics-{n}").status_code for n in range(3)] == [201] * 3

    # Whichever worker answers /metrics, it answers the sum over all of them, each worker's
    # counts at most FLUSH_INTERVAL old (batched): once they are all in, every scrape has them.
    deadline = time.monotonic() + metrics.FLUSH_INTERVAL * 10
    while time.monotonic() < deadline:
        scrape = server.metrics()
        if scrape.get(healthz, 0) - before.get(healthz, 0) == 40 and (
            scrape.get(held, 0) - before.get(held, 0) == 3
        ):
            break
        time.sleep(metrics.FLUSH_INTERVAL / 4)
    scrapes = [server.metrics() for _ in range(8)]
    for scrape in scrapes:
        assert scrape[healthz] - before.get(healthz, 0) == 40
        assert scrape[held] - before.get(held, 0) == 3
        assert scrape[latency] >= 3


# -- logs ----------------------------------------------------------------------------------------


def test_logs_are_json_lines_with_request_ids_and_no_secret(server: Server, cli: CliRunner) -> None:
    key = create_key(cli, server, "tevo-logs")
    made = server.hold(key, "logged", request_id="log-me")
    assert made.status_code == 201 and made.headers["X-Request-ID"] == "log-me"
    fresh = server.call("GET", "/v1/holds/logged", key)
    assert len(fresh.headers["X-Request-ID"]) == 32

    (line,) = server.access({"log-me"})
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/holds", 201)
    assert (line["key"], line["global_id"]) == ("tevo-logs", "logged")
    assert line["duration_ms"] > 0
    (got,) = server.access({fresh.headers["X-Request-ID"]})
    assert (got["global_id"], got["status"]) == ("logged", 200)

    lines = server.log_lines()  # every line of gunicorn's output is JSON, its own included
    assert any(line.get("logger") == "gunicorn.error" for line in lines)
    assert not any(line.get("logger") == "gunicorn.access" for line in lines)  # ours only
    output = server.log.read_text("utf-8")
    leaked = [secret[:12] for secret in server.secrets if secret in output]
    assert not leaked, f"secrets in the server's output: {leaked}"


# -- readiness -----------------------------------------------------------------------------------


def test_readyz_is_200_while_redis_answers_and_503_json_once_it_is_stopped() -> None:
    with redis_server() as url:
        env = {
            "TEVO_HOLD_REDIS_URL": url,
            "TEVO_HOLD_API_KEYS": "k",
            "TEVO_HOLD_REDIS_TIMEOUT": "0.5",
        }
        with gunicorn_server(env, workers=2, threads=2) as base:
            ready = requests.get(base + "/readyz", timeout=15)
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ok",
                "store": "redis",
                "checks": {"redis": "ok", "pos": "unknown"},
            }

            stopper = redis.Redis.from_url(url)
            stopper.shutdown(nosave=True)
            stopper.close()
            for _ in range(4):  # each worker
                # a worker's reading serves its /readyz for a second (web.READINESS_MAX_AGE)
                deadline = time.monotonic() + 10
                while True:
                    down = requests.get(
                        base + "/readyz", headers={"Connection": "close"}, timeout=15
                    )
                    if down.status_code != 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                assert down.status_code == 503, down.text
                assert down.headers["Content-Type"] == "application/problem+json"
                assert down.json()["code"] == "unavailable"
                assert down.json()["checks"] == {"redis": "unavailable", "pos": "unknown"}
            assert requests.get(base + "/healthz", timeout=15).status_code == 200
