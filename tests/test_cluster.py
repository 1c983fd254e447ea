"""Redis Cluster specifics: the state spreads over every master; the worker's reads across
shards (pipelined ZRANGEs over 256 due sets, SCAN) see every master; a master lost is failed
over to its replica and the client follows it.

(The whole behaviour and HTTP suites run on a cluster too: see ``client`` in conftest.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest
from redis.cluster import RedisCluster

from tevo_hold import (
    HoldService,
    HoldStatus,
    Ledger,
    PosAdapter,
    RedisInventoryAdapter,
    Settings,
    build_service,
)
from tevo_hold import errors as e
from tevo_hold.adapters.http import HttpPosAdapter
from tevo_hold.adapters.identity import check_adapter, record_adapter
from tevo_hold.connection import RedisClient, connect
from tevo_hold.keys import SHARDS, KeySpace, shard_of
from tevo_hold.ledger import DueItem
from tevo_hold.worker import Worker

from .servers import Cluster, redis_cluster, wait_for

KEYS = KeySpace()


def inventory_of(service: HoldService) -> RedisInventoryAdapter:
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    return adapter


def master_of(client: RedisCluster, key: str) -> int:
    """The port of the master that holds ``key``."""
    port: int = client.get_node_from_key(key).port
    return port


# -- the state spreads over the masters ----------------------------------------------------------


def test_the_holds_shards_spread_evenly_over_the_masters(cluster_client: RedisClient) -> None:
    assert isinstance(cluster_client, RedisCluster)
    per_master = Counter(master_of(cluster_client, KEYS.due(n)) for n in range(SHARDS))
    assert len(per_master) == 3
    # 256 tags hashed into 16384 slots cut in three: each master has roughly a third
    assert all(SHARDS / 3 * 0.6 < count < SHARDS / 3 * 1.4 for count in per_master.values()), (
        per_master
    )


@pytest.mark.slow
def test_holds_and_listings_lie_on_every_master(cluster: Cluster) -> None:
    cluster.flush()
    service = build_service(Settings(redis_url=cluster.url, api_keys=("k",)))
    try:
        adapter = inventory_of(service)
        for n in range(30):
            adapter.set_quantity(f"listing-{n}", 10)
        for n in range(60):
            service.hold(remote_id=f"listing-{n % 30}", quantity=1, global_id=f"order-{n}")
    finally:
        service.close()

    found = {}
    for port in cluster.master_ports():
        node = cluster.node(port)
        holds = list(node.scan_iter(match=KEYS.hold_pattern(), count=1000))
        listings = [k for k in node.scan_iter(match="tevo_hold:{l:*", count=1000) if b"}:" not in k]
        found[port] = (len(holds), len(listings))
    assert len(found) == 3
    assert sum(h for h, _ in found.values()) == 60
    assert sum(n for _, n in found.values()) == 30
    assert all(h > 0 and n > 0 for h, n in found.values()), found


# -- the worker's reads across shards ------------------------------------------------------------


class RecordingPos(PosAdapter):
    """A POS whose holds do not lapse by themselves (the worker releases them), and whose
    invoices fail for the global_ids in ``failing`` until that set is emptied."""

    def __init__(self) -> None:
        self.released: list[str] = []
        self.invoiced: list[str] = []
        self.failing: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        pass

    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        with self._lock:
            self.released.append(global_id)

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        if global_id in self.failing:
            raise e.PosError("the POS is down for maintenance")
        with self._lock:
            self.invoiced.append(global_id)


def test_the_worker_finds_due_work_on_every_shard(client: RedisClient) -> None:
    pos = RecordingPos()
    ttl = 0.5
    service = HoldService(Ledger(client), pos, hold_ttl=ttl, lease=5, retry_base=0.05)
    gids = [f"w-{n}" for n in range(40)]
    if isinstance(client, RedisCluster):  # on a cluster: their records lie on every master
        assert len({master_of(client, KEYS.hold(g)[0]) for g in gids}) == 3
    for gid in gids:
        service.hold(remote_id="L", quantity=1, global_id=gid)
    to_invoice = gids[:8]
    pos.failing = set(to_invoice[:4])
    for gid in to_invoice:
        with contextlib.suppress(e.PosError):
            service.invoice(global_id=gid, tevo_order_id=gid.upper())

    ledger = service.ledger
    assert sorted(ledger.scheduled("i")) == sorted(to_invoice[:4])  # the failed invoices
    assert sorted(h.global_id for h in ledger.scan()) == sorted(gids)
    time.sleep(ttl + 0.1)
    due = ledger.due_items()
    lapsed = {item.global_id for item in due if item.kind == "l"}
    assert lapsed == set(gids[8:])  # every held hold lapsed, on whichever shard it lies
    assert {item.global_id for item in due if item.kind == "i"} == set(to_invoice[:4])

    pos.failing.clear()
    worker = Worker(service, lease=5)
    assert worker.run_once() == len(due)
    assert sorted(pos.released) == sorted(gids[8:])
    assert sorted(pos.invoiced) == sorted(to_invoice)
    assert {service.get(global_id=g).status for g in to_invoice} == {HoldStatus.INVOICED}
    assert list(ledger.scheduled("i")) == []
    assert worker.run_once() == 0


# -- one master lost, no replica: the others' work goes on ---------------------------------------


@pytest.fixture(scope="module")
def partial() -> Iterator[Cluster]:
    """Three masters without replicas that serve on while one is lost
    (``cluster-require-full-coverage no``, as docs/operations.md advises)."""
    options = ["--cluster-require-full-coverage", "no"]
    with redis_cluster(masters=3, node_timeout_ms=1000, options=options) as nodes:
        yield nodes


@contextlib.contextmanager
def lost(cluster: Cluster, port: int, outage: str) -> Iterator[None]:
    """The master on ``port`` stalled (SIGSTOP: its port takes connections, nothing answers)
    or stopped (connections refused) within the block; back after it."""
    node = next(n for n in cluster.nodes if n.port == port)
    node.pause() if outage == "stalled" else node.stop()
    try:
        yield
    finally:
        if outage == "stalled":
            node.resume()
        else:
            node.start()  # it rejoins from its nodes.conf (its data is gone: no persistence)
            cluster.wait_ok()


def lapsed_holds(cluster: Cluster) -> tuple[HoldService, RecordingPos, list[str]]:
    """A service on ``cluster`` (holds lapse after 0.3 s) and 30 holds of it, lapsed: a POS
    release is due for each, on whichever master its shard lies."""
    cluster.flush()
    pos = RecordingPos()
    client = connect(Settings(redis_url=cluster.url))
    service = HoldService(Ledger(client), pos, hold_ttl=0.3, lease=5, retry_base=0.05)
    gids = [f"lost-{n}" for n in range(30)]
    for gid in gids:
        service.hold(remote_id="L", quantity=1, global_id=gid)
    wait_for(lambda: len(service.ledger.due_items()) == len(gids), 5, what="the holds lapsed")
    return service, pos, gids


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stalled", "stopped"])
def test_the_worker_does_the_other_masters_work_while_one_master_is_lost(
    partial: Cluster, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md: a master lost makes its own slots unavailable, the other masters
    serve on. The worker read the 256 due sets in one cluster pipeline, which failed as a whole
    (after sending each of the lost master's commands again one by one): no lapsed hold was
    released in the POS and no failed invoice retried, on any master, until it was back. Now
    the shards of the lost master are skipped, said once in the log, and read again after."""
    service, pos, gids = lapsed_holds(partial)
    client = service.ledger.client
    assert isinstance(client, RedisCluster)
    down = client.get_default_node().port  # the default node too: TIME is read per master
    healthy = [g for g in gids if master_of(client, KEYS.hold(g)[0]) != down]
    assert 0 < len(healthy) < len(gids)
    worker = Worker(service, lease=5)
    caplog.set_level(logging.WARNING, logger="tevo_hold")
    try:
        with lost(partial, down, outage):
            assert worker.run_once() == len(healthy)  # neither raises nor waits for it
            assert sorted(pos.released) == sorted(healthy)
            assert worker.run_once() == 0  # a second round: said once only
            said = [r.getMessage() for r in caplog.records if "could not be read" in r.message]
            assert len(said) == 1, said
            assert f"127.0.0.1:{down}" in said[0]
        wait_for(lambda: worker.run_once() >= 0 and "are read again" in caplog.text, 10)
        if outage == "stalled":  # back, with its holds: their releases are done now
            wait_for(lambda: worker.run_once() >= 0 and len(pos.released) == len(gids), 10)
            assert sorted(pos.released) == sorted(gids)
    finally:
        service.close()


@pytest.mark.slow
def test_the_backlog_with_a_master_stalled_is_unavailable_quickly(partial: Cluster) -> None:
    """The backlog (/metrics' tevo_hold_due_items, `tevo-hold backlog`) leaves no master's
    shards out: with one stalled it is Unavailable (the gauges are left out), within one
    attempt's time, where redis-py's cluster pipeline sent each of that master's 86 due sets
    its commands again one by one (a scrape took some 40 s)."""
    service, _, _ = lapsed_holds(partial)
    client = service.ledger.client
    assert isinstance(client, RedisCluster)
    try:
        assert service.ledger.backlog().items == 30
        with lost(partial, partial.master_ports()[1], "stalled"):
            started = time.monotonic()
            with pytest.raises(e.Unavailable):
                service.ledger.backlog()
            # one attempt's time (0.25 s), with room for a loaded machine (1 s was half a
            # second of it): the failure this guards against took some 40 s
            assert time.monotonic() - started < 5
        wait_for(lambda: service.ledger.backlog().items == 30, 10)
    finally:
        service.close()


def test_the_due_sets_are_found_where_a_stale_slot_map_does_not_say(
    cluster: Cluster, cluster_client: RedisClient
) -> None:
    """The due sets are read from the master the client's slot map names; one that names
    another (a slot moved since it was read) answers MOVED, and the due set is read through the
    cluster's client, which follows it and mends the map."""
    cluster.flush()
    assert isinstance(cluster_client, RedisCluster)
    pos = RecordingPos()
    service = HoldService(Ledger(cluster_client), pos, hold_ttl=0.05, lease=5)
    service.hold(remote_id="L", quantity=1, global_id="moved")
    due = KEYS.due(shard_of("moved"))
    right = cluster_client.get_node_from_key(due)
    wrong = next(n for n in cluster_client.get_primaries() if n.name != right.name)
    slot = cluster_client.keyslot(due)
    cluster_client.nodes_manager.slots_cache[slot] = [wrong]
    wait_for(lambda: service.ledger.due_items() == [DueItem("l", "moved")], 5)
    assert cluster_client.get_node_from_key(due).name == right.name


# -- failover ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[Cluster]:
    """A cluster of three masters with a replica each, failing over a master after 1 s."""
    with redis_cluster(masters=3, replicas=1, node_timeout_ms=1000) as nodes:
        yield nodes


@pytest.mark.slow
def test_a_stalled_master_is_failed_over_and_the_client_follows(replicated: Cluster) -> None:
    service = build_service(Settings(redis_url=replicated.url, api_keys=("k",)))
    client = service.ledger.client
    assert isinstance(client, RedisCluster)
    try:
        adapter = inventory_of(service)
        listings = [f"fo-{n}" for n in range(12)]
        for rid in listings:
            adapter.set_quantity(rid, 10)
        gids = [f"fo-order-{n}" for n in range(30)]
        for n, gid in enumerate(gids):
            service.hold(remote_id=listings[n % 12], quantity=1, global_id=gid)
        for port in replicated.master_ports():  # replicated before the failure: kept
            assert replicated.node(port).wait(1, 2000) == 1

        victim_port = master_of(client, KEYS.hold(gids[0])[0])
        victim = next(n for n in replicated.nodes if n.port == victim_port)
        lost = [g for g in gids if master_of(client, KEYS.hold(g)[0]) == victim_port]
        kept = [g for g in gids if g not in lost]
        victim.pause()  # stalled: its port takes connections, nothing answers
        try:
            # Until the cluster fails it over, calls on its slots answer Unavailable quickly;
            # the other masters' holds are served as ever.
            started = time.monotonic()
            with pytest.raises(e.Unavailable):
                service.get(global_id=lost[0])
            # two attempts of 0.25 s and a backoff; 2 s leaves a loaded machine room (1 s left
            # it half a second), and a call left without its timeout hangs past it
            assert time.monotonic() - started < 2
            assert service.get(global_id=kept[0]).status is HoldStatus.HELD

            def served() -> bool:
                return service.get(global_id=lost[0]).status is HoldStatus.HELD

            wait_for(served, 30, what="the failover")
            assert master_of(client, KEYS.hold(lost[0])[0]) != victim_port  # its replica's now
            assert {service.get(global_id=g).status for g in gids} == {HoldStatus.HELD}
            for n, rid in enumerate(listings):
                service.hold(remote_id=rid, quantity=1, global_id=f"fo-after-{n}")
            held = sum(adapter.stock(rid).held for rid in listings)
            assert held == len(gids) + len(listings)
        finally:
            victim.resume()  # it rejoins as the replica of its successor
    finally:
        service.close()


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stalled", "stopped"])
def test_a_cluster_unreachable_as_a_whole_answers_503_quickly(outage: str) -> None:
    """Every node stalled (a network that drops packets) or stopped: each call fails within
    its own attempts' time (the topology refresh after a failure runs in the background), and
    the client serves again by itself once the nodes are back."""
    with redis_cluster(masters=3) as whole:
        service = build_service(Settings(redis_url=whole.url, api_keys=("k",)))
        try:
            adapter = inventory_of(service)
            adapter.set_quantity("L", 10)
            gids = [f"cut-{n}" for n in range(6)]
            for gid in gids:
                service.hold(remote_id="L", quantity=1, global_id=gid)
            for node in whole.nodes:
                node.pause() if outage == "stalled" else node.stop()
            for gid in gids:
                started = time.monotonic()
                with pytest.raises(e.Unavailable):
                    service.get(global_id=gid)
                assert time.monotonic() - started < 1, gid
            for node in whole.nodes:
                node.resume() if outage == "stalled" else node.start(wait=False)
            if outage == "stopped":  # its data was not persisted: stock again
                whole.wait_ok()
                wait_for(lambda: adapter.set_quantity("L", 10), 10)
                for gid in gids:
                    service.hold(remote_id="L", quantity=1, global_id=gid)
            wait_for(lambda: service.get(global_id=gids[0]), 10, what="the cluster back")
            assert {service.get(global_id=g).status for g in gids} == {HoldStatus.HELD}
        finally:
            service.close()


# -- the adapter the server records, for the worker and the CLI ----------------------------------


def test_the_servers_adapter_and_its_pos_are_recorded_and_checked_in_one_slot(
    cluster_client: RedisClient,
) -> None:
    """Its class and its target lie in one slot: one MSET writes both, one MGET reads both."""
    ledger = Ledger(cluster_client, keys=KEYS)
    record_adapter(HoldService(ledger, HttpPosAdapter("https://pos.prod.example/api")))
    assert cluster_client.get(KEYS.server_adapter_target()) == b"https://pos.prod.example/api"
    check_adapter(HoldService(ledger, HttpPosAdapter("https://POS.prod.example:443/api/")))
    with pytest.raises(e.ConfigurationError, match=r"would call https://pos\.staging/api"):
        check_adapter(HoldService(ledger, HttpPosAdapter("https://pos.staging/api")))
