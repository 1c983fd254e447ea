"""Concurrency through the real server: gunicorn (several workers x threads) on a real Redis,
and again on a real three-master Redis Cluster (where every call takes the step-by-step path).

Requests come from a thread pool, each thread with its own ``requests.Session``, so holds,
releases and invoices of one listing or one ``global_id`` really race across processes. The
stock is then read straight from Redis with the reference adapter and must agree with the
answers the clients got.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pytest
import redis
import requests

from tevo_hold import RedisInventoryAdapter, Settings, build_service
from tevo_hold.connection import RedisClient, connect

from .servers import Cluster, gunicorn_server

pytestmark = pytest.mark.slow

API_KEY = "k"
AUTH = {"X-API-Key": API_KEY}
WORKERS = 4
THREADS = 4
#: Client threads: more than the server's 16 request threads, so requests queue and race.
CLIENTS = 32

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Answer:
    """What a client got back: status, JSON body (None if not JSON) and headers."""

    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed") == "true"

    def describe(self) -> str:
        return f"{self.status} {self.body!r}"


class Api:
    """A client of the server that keeps one ``requests.Session`` per calling thread."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(AUTH)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _answer(self, response: requests.Response) -> Answer:
        try:
            body = response.json()
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status_code, body, headers)

    def post(self, path: str, body: dict[str, Any]) -> Answer:
        with self._session().post(self.base + path, json=body, timeout=30) as response:
            return self._answer(response)

    def get(self, path: str) -> Answer:
        with self._session().get(self.base + path, timeout=30) as response:
            return self._answer(response)

    def hold(self, remote_id: str, quantity: int, global_id: str) -> Answer:
        return self.post(
            "/v1/holds", {"remote_id": remote_id, "quantity": quantity, "global_id": global_id}
        )

    def release(self, global_id: str) -> Answer:
        return self.post("/v1/releases", {"global_id": global_id})

    def invoice(self, global_id: str, tevo_order_id: int | str) -> Answer:
        return self.post("/v1/invoices", {"global_id": global_id, "tevo_order_id": tevo_order_id})

    def status_of(self, global_id: str) -> str:
        answer = self.get(f"/v1/holds/{global_id}")
        assert answer.status == 200, answer.describe()
        status: str = answer.body["status"]
        return status

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def parallel(fn: Callable[[T], R], items: Sequence[T], *, threads: int = CLIENTS) -> list[R]:
    """``fn`` over ``items`` from a pool of threads; results in the order of ``items``."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


def all_at_once(calls: Sequence[Callable[[], R]]) -> list[R]:
    """Run every call in its own thread, all released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], R]) -> R:
        barrier.wait(timeout=30)
        return call()

    return parallel(run, calls, threads=len(calls))


def assert_no_server_errors(answers: Sequence[Answer]) -> None:
    bad = [a.describe() for a in answers if a.status >= 500 or a.body is None]
    assert not bad, f"server errors or non-JSON answers: {bad[:5]}"


def assert_in_progress(answer: Answer) -> None:
    assert answer.status == 409, answer.describe()
    assert answer.code == "request_in_progress", answer.describe()
    assert answer.headers.get("content-type") == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1, answer.headers


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of the server's Redis, emptied: a redis-server, then a Redis Cluster."""
    if request.param == "cluster":
        cluster: Cluster = request.getfixturevalue("cluster")
        cluster.flush()
        return cluster.url
    url: str = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url) as flusher:
        flusher.flushdb()
    return url


@pytest.fixture(scope="module")
def redis_client(store_url: str) -> Iterator[RedisClient]:
    client = connect(Settings(redis_url=store_url, api_keys=(API_KEY,), redis_timeout=10))
    yield client
    client.close()


@pytest.fixture(scope="module")
def inventory(redis_client: RedisClient, store_url: str) -> RedisInventoryAdapter:
    """The reference inventory, read and stocked straight in the server's Redis."""
    service = build_service(Settings(redis_url=store_url, api_keys=(API_KEY,)), client=redis_client)
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    return adapter


@pytest.fixture(scope="module")
def server(store_url: str, redis_client: RedisClient) -> Iterator[str]:
    # Thousands of requests with one key within a minute: a load test, so no rate limit.
    env = {
        "TEVO_HOLD_REDIS_URL": store_url,
        "TEVO_HOLD_API_KEYS": API_KEY,
        "TEVO_HOLD_RATE_LIMIT": "off",
        # a load test on a machine that may be busy: Redis's answers are waited for (the
        # default, 0.25 s an attempt, is a production budget and would answer 503)
        "TEVO_HOLD_REDIS_TIMEOUT": "10",
    }
    with gunicorn_server(env, workers=WORKERS, threads=THREADS) as base:
        yield base


@pytest.fixture
def api(server: str) -> Iterator[Api]:
    client = Api(server)
    yield client
    client.close()


# -- a. many holds on one listing ----------------------------------------------------------------


def test_concurrent_holds_never_oversell_and_counters_add_up(
    api: Api, inventory: RedisInventoryAdapter
) -> None:
    rid, tickets = "conc-a", 25
    inventory.set_quantity(rid, tickets)
    # 150 holds of 1 ticket and 150 of 2: with more than 25 one-ticket holds, every ticket must
    # end up held (a last ticket left over would mean a one-ticket hold was refused wrongly).
    wanted = [(f"a-{i}", 1 + i % 2) for i in range(300)]
    answers = parallel(lambda w: api.hold(rid, w[1], w[0]), wanted)
    assert_no_server_errors(answers)

    held: dict[str, int] = {}
    for (gid, qty), answer in zip(wanted, answers, strict=True):
        if answer.status == 201:
            assert answer.body["status"] == "held", answer.describe()
            assert (answer.body["global_id"], answer.body["remote_id"]) == (gid, rid)
            assert answer.body["quantity"] == qty
            assert not answer.replayed, answer.describe()
            held[gid] = qty
        else:
            assert answer.status == 409, answer.describe()
            assert answer.code == "insufficient_quantity", answer.describe()
            assert answer.headers.get("content-type") == "application/problem+json"
            assert answer.body["available"] < qty, answer.describe()

    assert sum(held.values()) == tickets
    stock = inventory.stock(rid)
    assert (stock.on_hand, stock.held, stock.sold, stock.available) == (tickets, tickets, 0, 0)
    assert all(api.status_of(gid) == "held" for gid in held)

    # Release a third, invoice a third, keep the rest held: all at the same time.
    gids = sorted(held)
    to_release, to_invoice, kept = gids[0::3], gids[1::3], gids[2::3]
    order_ids = {gid: 10_000 + n for n, gid in enumerate(to_invoice)}
    calls: list[Callable[[], Answer]] = [partial(api.release, g) for g in to_release]
    calls += [partial(api.invoice, g, order_ids[g]) for g in to_invoice]
    answers = parallel(lambda call: call(), calls)
    assert_no_server_errors(answers)
    for gid, answer in zip(to_release, answers, strict=False):
        assert answer.status == 200, answer.describe()
        assert (answer.body["global_id"], answer.body["status"]) == (gid, "released")
    for gid, answer in zip(to_invoice, answers[len(to_release) :], strict=True):
        assert answer.status == 201, answer.describe()
        assert (answer.body["global_id"], answer.body["status"]) == (gid, "invoiced")
        assert answer.body["tevo_order_id"] == order_ids[gid]

    released = sum(held[g] for g in to_release)
    sold = sum(held[g] for g in to_invoice)
    still_held = sum(held[g] for g in kept)
    assert released + sold + still_held == tickets
    stock = inventory.stock(rid)
    assert (stock.on_hand, stock.held, stock.sold) == (tickets - sold, still_held, sold)
    assert stock.available == released
    assert {api.status_of(g) for g in to_release} == {"released"}
    assert {api.status_of(g) for g in to_invoice} == {"invoiced"}
    assert {api.status_of(g) for g in kept} == {"held"}

    # The released tickets can be held again, each exactly once.
    second = [f"a2-{i}" for i in range(100)]
    answers = parallel(lambda gid: api.hold(rid, 1, gid), second)
    assert_no_server_errors(answers)
    winners = [a for a in answers if a.status == 201]
    losers = [a for a in answers if a.status != 201]
    assert len(winners) == released
    assert all(a.status == 409 and a.code == "insufficient_quantity" for a in losers), [
        a.describe() for a in losers[:5]
    ]
    stock = inventory.stock(rid)
    assert (stock.on_hand, stock.held, stock.sold, stock.available) == (
        tickets - sold,
        still_held + released,
        sold,
        0,
    )


# -- b. identical requests arriving together -----------------------------------------------------


@pytest.mark.parametrize("attempt", range(3))
def test_identical_concurrent_holds_make_one_hold(
    api: Api, inventory: RedisInventoryAdapter, attempt: int
) -> None:
    rid, gid, qty = f"conc-b-{attempt}", f"b-{attempt}", 3
    inventory.set_quantity(rid, 10)
    answers = all_at_once([lambda: api.hold(rid, qty, gid)] * 50)
    assert_no_server_errors(answers)

    made = [a for a in answers if a.status == 201]
    assert made, [a.describe() for a in answers[:5]]
    for answer in answers:
        if answer.status != 201:
            assert_in_progress(answer)
    assert len({repr(a.body) for a in made}) == 1, {repr(a.body) for a in made}
    body = made[0].body
    assert (body["global_id"], body["remote_id"], body["quantity"], body["status"]) == (
        gid,
        rid,
        qty,
        "held",
    )
    # Only the request that made the hold answers without the replay header.
    assert sum(not a.replayed for a in made) == 1, [a.headers for a in made]

    stock = inventory.stock(rid)
    assert (stock.on_hand, stock.held, stock.sold, stock.available) == (10, qty, 0, 10 - qty)

    retry = api.hold(rid, qty, gid)
    assert retry.status == 201, retry.describe()
    assert retry.replayed
    assert retry.body == body
    assert inventory.stock(rid).held == qty


def test_identical_concurrent_invoices_sell_once(
    api: Api, inventory: RedisInventoryAdapter
) -> None:
    rid, tickets = "conc-b-invoice", 20
    inventory.set_quantity(rid, tickets)
    sold = 0
    for n in range(3):
        gid, qty, order = f"b-invoice-{n}", 2, 7000 + n
        assert api.hold(rid, qty, gid).status == 201
        answers = all_at_once([partial(api.invoice, gid, order)] * 40)
        assert_no_server_errors(answers)
        made = [a for a in answers if a.status == 201]
        assert made, [a.describe() for a in answers[:5]]
        for answer in answers:
            if answer.status != 201:
                assert_in_progress(answer)
        assert len({repr(a.body) for a in made}) == 1, {repr(a.body) for a in made}
        assert made[0].body["status"] == "invoiced"
        assert made[0].body["tevo_order_id"] == order
        assert sum(not a.replayed for a in made) == 1, [a.headers for a in made]
        sold += qty
        stock = inventory.stock(rid)
        assert (stock.on_hand, stock.held, stock.sold) == (tickets - sold, 0, sold)


# -- c. release and invoice of the same hold racing ----------------------------------------------


def test_concurrent_release_and_invoice_end_in_one_state(
    api: Api, inventory: RedisInventoryAdapter
) -> None:
    rid, tickets = "conc-c", 100
    inventory.set_quantity(rid, tickets)
    holds = {f"c-{i}": 1 + i % 3 for i in range(30)}
    order_ids = {gid: 50_000 + n for n, gid in enumerate(holds)}
    made = parallel(lambda gid: api.hold(rid, holds[gid], gid), list(holds))
    assert all(a.status == 201 for a in made), [a.describe() for a in made if a.status != 201]
    assert inventory.stock(rid).held == sum(holds.values())

    # Each hold's release and invoice start together (a barrier per pair); all pairs at once,
    # half of them submitting the invoice first.
    barriers = {gid: threading.Barrier(2) for gid in holds}

    def race(task: tuple[str, str]) -> tuple[str, str, Answer]:
        kind, gid = task
        barriers[gid].wait(timeout=30)
        answer = api.release(gid) if kind == "release" else api.invoice(gid, order_ids[gid])
        return kind, gid, answer

    tasks: list[tuple[str, str]] = []
    for n, gid in enumerate(holds):
        pair = [("release", gid), ("invoice", gid)]
        tasks += pair if n % 2 else pair[::-1]
    results = parallel(race, tasks, threads=len(tasks))
    assert_no_server_errors([answer for _, _, answer in results])
    got = {(kind, gid): answer for kind, gid, answer in results}

    invoiced: list[str] = []
    released: list[str] = []
    for gid in holds:
        rel, inv = got["release", gid], got["invoice", gid]
        assert not (rel.status == 200 and inv.status == 201), (
            f"{gid}: both release ({rel.describe()}) and invoice ({inv.describe()}) succeeded"
        )
        if inv.status == 201:
            assert inv.body["status"] == "invoiced", inv.describe()
            assert rel.status == 409, rel.describe()
            assert rel.code in ("hold_already_invoiced", "request_in_progress"), rel.describe()
            if rel.code == "request_in_progress":
                assert_in_progress(rel)
            invoiced.append(gid)
        elif rel.status == 200:
            assert rel.body["status"] == "released", rel.describe()
            assert inv.status == 409, inv.describe()
            assert inv.code in ("hold_released", "request_in_progress"), inv.describe()
            if inv.code == "request_in_progress":
                assert_in_progress(inv)
            released.append(gid)
        else:
            pytest.fail(f"{gid}: neither succeeded: {rel.describe()} / {inv.describe()}")

    for gid in invoiced:
        assert api.status_of(gid) == "invoiced"
        again = api.release(gid)
        assert (again.status, again.code) == (409, "hold_already_invoiced"), again.describe()
        replay = api.invoice(gid, order_ids[gid])
        assert replay.status == 201 and replay.replayed, replay.describe()
    for gid in released:
        assert api.status_of(gid) == "released"
        again = api.invoice(gid, order_ids[gid])
        assert (again.status, again.code) == (409, "hold_released"), again.describe()
        repeat = api.release(gid)
        assert repeat.status == 200, repeat.describe()
        assert repeat.body["status"] == "released"

    sold = sum(holds[g] for g in invoiced)
    stock = inventory.stock(rid)
    assert (stock.on_hand, stock.held, stock.sold) == (tickets - sold, 0, sold)
    assert stock.available == tickets - sold
