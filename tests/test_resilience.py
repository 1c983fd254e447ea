"""Resilience, with real processes: gunicorn serving a private redis-server that fails.

- Redis stopped, or stalled (SIGSTOP: its port still takes connections, nothing answers): every
  endpoint answers ``503 unavailable`` JSON within a second, and serves again by itself when
  Redis is back, with no restart of gunicorn.
- Nothing is left half-written: a request that failed half-way leaves a hold that is absent or
  that its retry completes; the stock always adds up. A full Redis (noeviction) answers 503 too.
- gunicorn's graceful shutdown (SIGTERM) finishes the requests in flight; a worker killed with
  SIGKILL mid-request leaves its hold to the retry, which completes it after the lease (or to
  the worker, which gives its tickets back if no retry comes).
- The worker waits out a Redis outage, logging each round that met it, and does the work that
  came due once Redis is back.

The server runs the reference inventory through ``tests.slow_pos:SlowInventory``: the
step-by-step path every POS of one's own takes (claim, POS call, finish), with a POS call that
sleeps for listings named ``slow-*``, so a test can act while a request is in flight. Redis
keeps an append-only file with ``appendfsync always``, as production should: a restarted Redis
has every write it acknowledged.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tevo_hold import HoldService, RedisInventoryAdapter, Settings, build_service, errors
from tevo_hold.worker import Worker

from .servers import Gunicorn, RedisProcess, gunicorn_process, wait_for, worker_process
from .slow_pos import marker

pytestmark = pytest.mark.slow

API_KEY = "k"
AUTH = {"X-API-Key": API_KEY}
#: Seconds a request owns its global_id: a dead request's hold is taken over after this.
LEASE = 1.0
#: Seconds the slow POS sleeps in its first call for a ``slow-*`` listing.
DELAY = 2.0
#: What "answers quickly" means when Redis is down or stalled.
BUDGET = 1.0


def env_for(url: str) -> dict[str, str]:
    return {
        "TEVO_HOLD_REDIS_URL": url,
        "TEVO_HOLD_API_KEYS": API_KEY,
        "TEVO_HOLD_LEASE": str(LEASE),
        "TEVO_HOLD_ADAPTER": "tests.slow_pos:SlowInventory",
        "TEST_POS_DELAY": str(DELAY),
    }


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server that tests stop, start, pause and resume; persisted as in
    production (AOF, ``appendfsync always``), so a restart loses nothing acknowledged."""
    server = RedisProcess(
        tmp_path_factory.mktemp("resilience"),
        ["--appendonly", "yes", "--appendfsync", "always"],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_up(redis_proc: RedisProcess) -> Iterator[RedisProcess]:
    """The private Redis, running and empty at the start of a test, running again at its end."""
    if redis_proc.proc is None:
        redis_proc.start()
    redis_proc.resume()
    with redis_proc.client() as client:
        client.flushall()
    yield redis_proc
    redis_proc.resume() if redis_proc.proc is not None else redis_proc.start()


@pytest.fixture(scope="module")
def server(redis_proc: RedisProcess) -> Iterator[Gunicorn]:
    with gunicorn_process(env_for(redis_proc.url), workers=2, threads=4) as running:
        yield running


@pytest.fixture
def service(redis_up: RedisProcess) -> Iterator[HoldService]:
    """The same service as the server's, in this process: to stock listings and look at them."""
    built = build_service(Settings.from_mapping(env_for(redis_up.url)))
    yield built
    built.close()


@pytest.fixture
def stock(service: HoldService) -> RedisInventoryAdapter:
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    adapter.set_quantity("L", 100)
    adapter.set_quantity("slow-L", 100)
    return adapter


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with session() as new:
        yield new


# -- helpers -------------------------------------------------------------------------------------


def session() -> requests.Session:
    """A new session that sends the API key (one per thread: sessions are not thread-safe).

    Each request on a connection of its own: one kept alive across a test's waits could reach
    gunicorn's keepalive (5 s) on a slow machine, and the worker closed it as the next request
    went out (ConnectionResetError, a failed retry that was never answered)."""
    new = requests.Session()
    new.headers.update({**AUTH, "Connection": "close"})
    return new


def hold(http: requests.Session, base: str, gid: str, rid: str = "L", qty: int = 2) -> Any:
    body = {"remote_id": rid, "quantity": qty, "global_id": gid}
    return http.post(f"{base}/v1/holds", json=body, timeout=30)


def invoice(http: requests.Session, base: str, gid: str, order: int = 7) -> Any:
    body = {"global_id": gid, "tevo_order_id": order}
    return http.post(f"{base}/v1/invoices", json=body, timeout=30)


def release(http: requests.Session, base: str, gid: str) -> Any:
    return http.post(f"{base}/v1/releases", json={"global_id": gid}, timeout=30)


def get(http: requests.Session, base: str, gid: str) -> Any:
    return http.get(f"{base}/v1/holds/{gid}", timeout=30)


def endpoints(gid: str) -> dict[str, Callable[[requests.Session, str], Any]]:
    """Every endpoint that needs Redis: a new hold ``<gid>-new``, and calls on the holds
    ``gid`` and ``<gid>-r`` made before (``<gid>-r`` is the one to release)."""
    return {
        "new hold": lambda http, base: hold(http, base, f"{gid}-new"),
        "repeated hold": lambda http, base: hold(http, base, gid),
        "release": lambda http, base: release(http, base, f"{gid}-r"),
        "invoice": lambda http, base: invoice(http, base, gid),
        "get": lambda http, base: get(http, base, gid),
    }


def assert_unavailable_quickly(http: requests.Session, base: str, gid: str) -> None:
    """Every endpoint answers a 503 problem within BUDGET seconds; /healthz answers 200."""
    slow = []
    for name, call in endpoints(gid).items():
        started = time.monotonic()
        response = call(http, base)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
        assert response.headers["Content-Type"] == "application/problem+json", name
        assert response.json()["code"] == "unavailable", name
        assert int(response.headers["Retry-After"]) >= 1, name
        if elapsed >= BUDGET:
            slow.append(f"{name}: {elapsed:.2f}s")
    assert not slow, f"503 took too long: {slow}"
    assert http.get(f"{base}/healthz", timeout=5).status_code == 200


def settle(call: Callable[[], Any], *, timeout: float = 10.0) -> Any:
    """``call()`` until it answers something other than 409 request_in_progress or 503."""
    deadline = time.monotonic() + timeout
    while True:
        response = call()
        busy = response.status_code == 503 or (
            response.status_code == 409 and response.json()["code"] == "request_in_progress"
        )
        if not busy or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def in_background(call: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def wait_for_marker(service: HoldService, call: str, gid: str) -> int:
    """Wait until the slow POS call ``call`` of ``gid`` is in flight; the pid running it."""
    client = service.ledger.client
    wait_for(lambda: client.get(marker(call, gid)), 10, what=f"the slow {call} of {gid}")
    value = client.get(marker(call, gid))
    assert isinstance(value, bytes)
    return int(value)


# -- Redis down ----------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["stopped", "stalled"])
def test_redis_down_every_endpoint_answers_503_quickly_and_recovers_by_itself(
    server: Gunicorn,
    redis_up: RedisProcess,
    service: HoldService,
    stock: RedisInventoryAdapter,
    http: requests.Session,
    outage: str,
) -> None:
    base = server.base
    for gid in ("r", "r-r"):
        made = hold(http, base, gid)
        assert made.status_code == 201, made.text

    if outage == "stopped":
        redis_up.stop()
    else:
        redis_up.pause()
    # Twice: the first time finds pooled connections, the second the reconnecting pool.
    for _ in range(2):
        assert_unavailable_quickly(http, base, "r")

    if outage == "stopped":
        redis_up.start()
    else:
        redis_up.resume()
    # Serving again, with no restart of gunicorn. A request that answered 503 either left
    # nothing or its retry completes it: a stalled Redis runs what it had read off a socket when
    # it resumes, so a 503 may have been a hold claimed, a release or an invoice started.
    fresh = settle(lambda: hold(http, base, "r-new"))
    assert fresh.status_code == 201, fresh.text
    released = settle(lambda: release(http, base, "r-r"))
    assert released.status_code == 200, released.text
    sold = settle(lambda: invoice(http, base, "r"))
    assert sold.status_code == 201, sold.text
    # Every write acknowledged before the outage is still there, and the stock adds up.
    assert [service.get(global_id=g).status.value for g in ("r", "r-r", "r-new")] == [
        "invoiced",
        "released",
        "held",
    ]
    after = stock.stock("L")
    assert (after.on_hand, after.held, after.sold) == (98, 2, 2)


def test_redis_dying_mid_request_leaves_a_hold_its_retry_completes(
    server: Gunicorn,
    redis_up: RedisProcess,
    service: HoldService,
    stock: RedisInventoryAdapter,
    http: requests.Session,
) -> None:
    """The hold is claimed in the ledger and made in the POS, then Redis dies before the ledger
    records it: 503. The pending claim (kept by the append-only file) is completed by the
    retry, and the POS, idempotent per global_id, holds the tickets once."""
    base = server.base
    answer = in_background(lambda: hold(session(), base, "mid", rid="slow-L", qty=3))
    wait_for_marker(service, "hold", "mid")
    redis_up.stop()
    started = time.monotonic()
    response = answer.result(timeout=30)
    assert response.status_code == 503, response.text
    assert time.monotonic() - started < DELAY + BUDGET

    redis_up.start()
    pending = settle(lambda: get(http, base, "mid"))
    assert pending.status_code == 200, pending.text
    assert pending.json()["status"] == "pending"  # claimed; its POS call never finished
    retried = settle(lambda: hold(session(), base, "mid", rid="slow-L", qty=3))
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == "held"
    assert stock.stock("slow-L").held == 3


def test_redis_full_answers_503_and_leaves_nothing(
    server: Gunicorn,
    redis_up: RedisProcess,
    stock: RedisInventoryAdapter,
    http: requests.Session,
) -> None:
    """maxmemory reached under noeviction: Redis refuses a script at its first write, so the
    POS step fails cleanly, the claim before it is undone (Redis lets a full server delete),
    and everything reads as before; writes work again as soon as there is room."""
    base = server.base
    assert hold(http, base, "full-0").status_code == 201
    with redis_up.client() as admin:
        admin.config_set("maxmemory", 1)
        try:
            refused = hold(http, base, "full-1")
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "unavailable"
            assert get(http, base, "full-1").status_code == 404  # the claim was undone
            assert get(http, base, "full-0").json()["status"] == "held"
            assert stock.stock("L").held == 2
        finally:
            admin.config_set("maxmemory", 0)
    assert hold(http, base, "full-1").status_code == 201


@contextmanager
def service_on(redis_process: RedisProcess) -> Iterator[tuple[HoldService, RedisInventoryAdapter]]:
    """``redis_process`` started, and a service with the reference adapter on it; both stopped
    at the end."""
    redis_process.start()
    service = build_service(Settings.from_mapping(env_for(redis_process.url)))
    try:
        adapter = service.adapter
        assert isinstance(adapter, RedisInventoryAdapter)
        yield service, adapter
    finally:
        service.close()
        redis_process.stop()


def test_a_master_without_its_replicas_refuses_writes_with_503(tmp_path: Path) -> None:
    """min-replicas-to-write (see the README's failover notes): NOREPLICAS is unavailable."""
    lonely = RedisProcess(tmp_path, ["--min-replicas-to-write", "1"])
    with service_on(lonely) as (service, adapter):
        with pytest.raises(errors.Unavailable, match="NOREPLICAS"):
            adapter.set_quantity("L", 1)
        with pytest.raises(errors.HoldNotFound):  # reads are served
            service.get(global_id="g")


def test_a_redis_that_cannot_save_refuses_writes_with_503_and_serves_reads(
    tmp_path: Path,
) -> None:
    """stop-writes-on-bgsave-error (Redis's default) with a snapshot that failed (its directory
    gone, as a full or lost disk would): MISCONF refuses every write. An outage, a 503 to retry,
    never a 500; reads are served."""
    saving = RedisProcess(tmp_path, ["--save", "3600 1"])
    with service_on(saving) as (service, adapter), saving.client() as admin:
        adapter.set_quantity("L", 1)
        shutil.rmtree(saving.dir)  # its working directory: no snapshot can be written now
        try:
            admin.bgsave()
            wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10)
            with pytest.raises(errors.Unavailable, match="MISCONF"):
                service.hold(remote_id="L", quantity=1, global_id="g")
            with pytest.raises(errors.HoldNotFound):  # reads are served
                service.get(global_id="g")
        finally:
            admin.config_set("save", "")  # or its shutdown would try to save, and fail


def test_a_redis_busy_with_a_long_script_answers_503(redis_up: RedisProcess) -> None:
    """Another client's script running past busy-reply-threshold: every other call is answered
    BUSY until it ends. An outage of a moment, a 503 to retry, never a 500."""
    service = build_service(Settings.from_mapping(env_for(redis_up.url)))
    ended: list[str] = []

    def spin() -> None:
        with redis_up.client() as looping:
            try:
                looping.eval("while true do end", 0)
            except Exception as exc:  # ended by SCRIPT KILL below
                ended.append(str(exc))

    with redis_up.client() as admin:
        admin.config_set("busy-reply-threshold", 50)
        spinning = threading.Thread(target=spin, daemon=True)
        spinning.start()
        try:
            # until the script runs past the threshold (a fixed 0.2 s: on a busy machine the
            # thread had not sent it yet, and the call below found Redis free)
            wait_for(lambda: _busy(admin), 10, what="the long script")
            with pytest.raises(errors.Unavailable, match="BUSY"):
                service.get(global_id="g")
        finally:
            wait_for(lambda: _killed(admin), 10)
            spinning.join(10)
            admin.config_set("busy-reply-threshold", 5000)
        try:
            assert ended and "killed" in ended[0].lower()
            with pytest.raises(errors.HoldNotFound):  # Redis is free again
                service.get(global_id="g")
        finally:
            service.close()


def _busy(admin: Any) -> bool:
    """Whether Redis answers BUSY: a script runs past busy-reply-threshold."""
    try:
        admin.ping()
    except redis.exceptions.ResponseError as exc:
        return "BUSY" in str(exc)
    return False


def _killed(admin: Any) -> bool:
    """SCRIPT KILL, until no script is left running."""
    try:
        admin.script_kill()
    except Exception as exc:  # NOTBUSY: nothing (left) to kill
        return "NOTBUSY" in str(exc)
    return False


# -- gunicorn ------------------------------------------------------------------------------------


def test_graceful_shutdown_finishes_the_requests_in_flight(
    redis_up: RedisProcess, service: HoldService, stock: RedisInventoryAdapter
) -> None:
    with gunicorn_process(env_for(redis_up.url), workers=2, threads=2) as running:
        with session() as http:
            assert hold(http, running.base, "before").status_code == 201
        answers = [
            in_background(lambda: hold(session(), running.base, "slow-hold", "slow-L")),
            in_background(lambda: invoice(session(), running.base, "before")),
        ]
        wait_for_marker(service, "hold", "slow-hold")
        running.proc.send_signal(signal.SIGTERM)
        held = answers[0].result(timeout=30)
        assert held.status_code == 201, held.text
        assert held.json()["status"] == "held"
        assert answers[1].result(timeout=30).status_code == 201
        assert running.proc.wait(timeout=30) == 0, running.output()[-3000:]
    assert service.get(global_id="slow-hold").status.value == "held"
    assert stock.stock("slow-L").held == 2


@pytest.mark.parametrize("call", ["hold", "invoice"])
def test_a_worker_killed_mid_request_leaves_nothing_stuck(
    server: Gunicorn,
    service: HoldService,
    stock: RedisInventoryAdapter,
    http: requests.Session,
    call: str,
) -> None:
    """SIGKILL the gunicorn worker after its POS call acted, before the ledger knows: the client
    gets no answer, the ledger keeps the claim; the retry takes it over after the lease and
    completes it, and the tickets move once."""
    base, gid = server.base, f"killed-{call}"
    if call == "invoice":
        assert hold(http, base, gid, rid="slow-L").status_code == 201
        request: Callable[[requests.Session], Any] = lambda s: invoice(s, base, gid)  # noqa: E731
    else:
        request = lambda s: hold(s, base, gid, rid="slow-L")  # noqa: E731

    answer = in_background(lambda: request(session()))
    pid = wait_for_marker(service, call, gid)
    assert pid != server.proc.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(requests.ConnectionError):
        answer.result(timeout=30)
    claimed = service.get(global_id=gid)
    assert claimed.status.value == ("pending" if call == "hold" else "invoicing")

    retried = settle(lambda: request(http))
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == ("held" if call == "hold" else "invoiced")
    after = stock.stock("slow-L")
    assert (after.held, after.sold) == ((2, 0) if call == "hold" else (0, 2))


def test_an_adapter_raising_system_exit_ends_neither_the_server_nor_the_worker(
    redis_up: RedisProcess, service: HoldService, stock: RedisInventoryAdapter
) -> None:
    """An adapter's SystemExit(3) (a vendor's sys.exit) ended the gunicorn worker, and gunicorn's
    master took its exit code for "Worker failed to boot" and shut the whole server down; then
    it ended `tevo-hold worker` at each retry of the invoice. It is an unexpected error like any
    other: the invoice answers 500 and is kept, the worker retries it and runs on, and still
    stops on SIGINT."""
    env = {
        **env_for(redis_up.url),
        "TEVO_HOLD_RETRY_BASE": "0.05",
        "TEVO_HOLD_WORKER_INTERVAL": "0.05",
    }
    stock.set_quantity("exit-L", 10)
    with gunicorn_process(env, workers=1, threads=2) as running, session() as http:
        assert hold(http, running.base, "exit", "exit-L").status_code == 201
        answer = invoice(http, running.base, "exit")
        assert answer.status_code == 500, answer.text
        assert answer.json()["code"] == "internal_error"
        assert hold(http, running.base, "after").status_code == 201  # it serves on
        assert running.proc.poll() is None
    assert service.get(global_id="exit").status.value == "invoice_failed"

    with worker_process(env, "exit-worker") as proc:
        wait_for(
            lambda: service.get(global_id="exit").invoice_attempts >= 3,
            15,
            what="two retries of the invoice by the worker",
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    failed = service.get(global_id="exit")
    assert failed.status.value == "invoice_failed"
    assert failed.last_error is not None and "internal_error" in failed.last_error
    assert stock.stock("exit-L").sold == 0


def test_a_hold_killed_mid_request_and_never_retried_is_given_back(
    server: Gunicorn, service: HoldService, stock: RedisInventoryAdapter
) -> None:
    """No retry comes: the worker compensates the hold after its lease (releases it in the POS
    and forgets it), so no tickets stay stranded and nothing stays pending."""
    answer = in_background(lambda: hold(session(), server.base, "orphan", "slow-L"))
    os.kill(wait_for_marker(service, "hold", "orphan"), signal.SIGKILL)
    with pytest.raises(requests.ConnectionError):
        answer.result(timeout=30)
    assert service.get(global_id="orphan").status.value == "pending"

    worker = Worker(service, lease=5, interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: not _exists(service, "orphan"), LEASE + 10, what="the compensation")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert stock.stock("slow-L").held == 0


def test_the_worker_waits_out_a_redis_outage_then_does_the_work_due(
    redis_up: RedisProcess, service: HoldService, stock: RedisInventoryAdapter
) -> None:
    """Redis stops while a compensation is coming due: the worker logs each failed round and
    carries on (it never dies of an outage); once Redis is back, with what its append-only file
    kept, the worker compensates the hold (releases it in the POS and forgets it)."""
    service.ledger.claim_hold("outage", "L", 2, ttl=60, lease=LEASE, token="t-1", actor="test")
    redis_up.stop()
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    worker_log = logging.getLogger("tevo_hold.worker")
    worker_log.addHandler(handler)
    worker = Worker(service, lease=5, interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(warnings) >= 2, 10, what="two rounds of the worker meeting the outage")
        assert thread.is_alive()
        assert all("Redis is unavailable" in line and "retrying" in line for line in warnings)
        redis_up.start()
        wait_for(lambda: not _exists(service, "outage"), LEASE + 10, what="the compensation")
    finally:
        stop.set()
        thread.join(timeout=10)
        worker_log.removeHandler(handler)
    assert not thread.is_alive()
    assert stock.stock("L").held == 0


def _exists(service: HoldService, gid: str) -> bool:
    try:
        service.get(global_id=gid)
    except errors.HoldNotFound:
        return False
    return True
