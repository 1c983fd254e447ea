"""``TEVO_HOLD_REDIS_URL``'s forms, each against real servers: a Redis Cluster
(``redis+cluster://``), a master behind Sentinel (``redis+sentinel://``, through a failover),
TLS (``rediss://``, ``rediss+cluster://``); and clients that start while Redis is down."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import redis

from tevo_hold import HoldService, RedisInventoryAdapter, Settings, build_service, create_app
from tevo_hold import errors as e
from tevo_hold._redis import fail_fast, translate_errors
from tevo_hold.connection import MASTER_CHECK_INTERVAL, LazyRedisCluster, connect
from tevo_hold.keys import KeySpace
from tevo_hold.web import EXTENSION_KEY

from .recording_pos import RecordingPos
from .servers import (
    Cluster,
    RedisProcess,
    free_port,
    make_certificates,
    redis_sentinel,
    single_node_cluster,
    wait_for,
)

KEYS = KeySpace()


def service_for(url: str) -> HoldService:
    return build_service(Settings(redis_url=url, api_keys=("k",)))


def stocked(service: HoldService, rid: str = "L", quantity: int = 10) -> RedisInventoryAdapter:
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    adapter.set_quantity(rid, quantity)
    return adapter


def hold(service: HoldService, gid: str, rid: str = "L", qty: int = 1) -> str:
    return service.hold(remote_id=rid, quantity=qty, global_id=gid).hold.status.value


def port_of(url: str) -> int:
    """The port of a redis:// URL of the tests' servers (``redis://127.0.0.1:PORT/0``)."""
    return int(url.rsplit(":", 1)[1].split("/")[0])


# -- settings ------------------------------------------------------------------------------------

URLS = [
    "redis://h:6380/0",
    "rediss://h:6380/0?ssl_ca_certs=/ca.pem",
    "unix:///run/redis.sock",
    "redis+cluster://h1:7000",
    "redis+cluster://user:pw@h1:7000,h2:7001,[::1]:7002",
    "rediss+cluster://h1:7000,h2:7001?ssl_ca_certs=/ca.pem",
    "redis+sentinel://h1:26379,h2:26379/mymaster",
    "redis+sentinel://:pw@h1:26379/mymaster/2?sentinel_password=s",
]


@pytest.mark.parametrize("url", URLS)
def test_every_url_form_is_accepted_and_makes_a_client_without_connecting(url: str) -> None:
    settings = Settings.from_env({"TEVO_HOLD_REDIS_URL": url, "TEVO_HOLD_API_KEYS": "k"})
    client = connect(settings)  # no server at any of these: nothing connects yet
    assert isinstance(client, LazyRedisCluster) == ("+cluster" in url)
    client.close()


def test_an_unknown_scheme_names_the_forms_accepted() -> None:
    with pytest.raises(e.ConfigurationError) as info:
        Settings.from_env({"TEVO_HOLD_REDIS_URL": "redis+proxy://h:1", "TEVO_HOLD_API_KEYS": "k"})
    for form in ("redis://", "rediss://", "unix://", "redis+cluster://", "redis+sentinel://"):
        assert form in str(info.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h1", "host:port"),
        ("redis+cluster://h1:7000,h2", "host:port"),
        ("redis+cluster://h1:7000/3", "database 0"),
        ("redis+sentinel://h1:26379", "service_name"),
        ("redis+sentinel://h1:26379/m/x", "service_name"),
    ],
)
def test_malformed_cluster_and_sentinel_urls_say_what_is_expected(url: str, says: str) -> None:
    with pytest.raises(e.ConfigurationError, match=says):
        connect(Settings(redis_url=url, api_keys=("k",)))


# -- Redis Cluster -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cluster_url_of_one_node_finds_the_others(cluster: Cluster) -> None:
    service = service_for(f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}")
    try:
        cluster.flush()
        stocked(service)
        assert hold(service, "one-node") == "held"
        client = service.ledger.client
        assert isinstance(client, LazyRedisCluster)
        assert len(client.get_primaries()) == 3
    finally:
        service.close()


@pytest.mark.slow
def test_a_cluster_url_whose_first_node_is_down_uses_the_next(cluster: Cluster) -> None:
    nodes = [f"127.0.0.1:{free_port()}", *(f"127.0.0.1:{n.port}" for n in cluster.nodes)]
    service = service_for("redis+cluster://" + ",".join(nodes))
    try:
        cluster.flush()
        stocked(service)
        assert hold(service, "dead-first") == "held"
    finally:
        service.close()


@pytest.mark.slow
def test_a_cluster_client_starts_while_the_cluster_is_down_and_works_once_it_is_up(
    tmp_path: Path,
) -> None:
    """gunicorn workers build their client at boot: with the cluster unreachable they still
    boot, answer 503 quickly, and work as soon as the cluster answers."""
    port = free_port()
    service = service_for(f"redis+cluster://127.0.0.1:{port}")
    node: RedisProcess | None = None
    try:
        started = time.monotonic()
        with pytest.raises(e.Unavailable):
            hold(service, "early")
        assert time.monotonic() - started < 2  # quickly: refused, not waited for (1 s: tight)
        node = single_node_cluster(tmp_path, port=port)
        # (within a second of a failed first use the client fails at once, without trying)
        wait_for(lambda: stocked(service), 5, what="the cluster client")
        assert hold(service, "early") == "held"
    finally:
        service.close()
        if node is not None:
            node.stop()


def test_a_cluster_url_at_a_redis_not_in_cluster_mode_stops_the_start(redis_url: str) -> None:
    """redis+cluster:// aimed at a plain Redis: one line naming the setting and the fix, as
    the opposite mistake gets, not redis-py's RedisClusterException out of create_app (a
    gunicorn worker that failed to boot)."""
    url = f"redis+cluster://127.0.0.1:{port_of(redis_url)}"
    with pytest.raises(e.ConfigurationError, match=r"not in cluster mode: write redis://"):
        create_app({"TEVO_HOLD_REDIS_URL": url, "TEVO_HOLD_API_KEYS": "k"})


@pytest.mark.slow
def test_a_cluster_not_formed_yet_is_unavailable_until_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes up but not joined (before `redis-cli --cluster create`): the server starts and
    answers 503 saying so, as while Redis is down (redis-py's reading of the topology died of
    an IndexError, out of create_app), and serves once the cluster is formed."""
    monkeypatch.setattr("tevo_hold.connection.RETRY_FIRST_USE_AFTER", 0.0)
    options = ["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf")]
    node = RedisProcess(tmp_path, [*options, "--cluster-port", str(free_port())])
    node.start()
    try:
        url = f"redis+cluster://127.0.0.1:{node.port}"
        app = create_app({"TEVO_HOLD_REDIS_URL": url, "TEVO_HOLD_API_KEYS": "k"})
        service = app.extensions[EXTENSION_KEY].service
        try:
            body = {"remote_id": "L", "quantity": 1, "global_id": "g"}
            answer = app.test_client().post("/v1/holds", json=body, headers={"X-API-Key": "k"})
            assert answer.status_code == 503, answer.json
            assert "serves a slot yet" in answer.json["detail"]
            with node.client(socket_timeout=2) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                wait_for(lambda: client.cluster("info")["cluster_state"] == "ok")
            stocked(service)
            assert hold(service, "g") == "held"
        finally:
            service.close()
    finally:
        node.stop()


# -- Sentinel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sentinel_url_finds_the_master_and_follows_a_failover() -> None:
    with redis_sentinel(password="data-pw", sentinel_password="sentinel-pw") as sentinels:
        service = service_for(sentinels.url)
        try:
            adapter = stocked(service)
            assert hold(service, "before") == "held"
            with sentinels.master.client() as master:
                master.wait(1, 5000)  # replicated: a failover keeps it (see the README)
            sentinels.master.pause()  # stalled: unavailable, quickly
            started = time.monotonic()
            with pytest.raises(e.Unavailable):
                service.get(global_id="before")
            # two attempts of 0.25 s (redis_timeout) and a backoff: about half a second; 2 s
            # leaves room for a loaded machine (1 s did not), and a call left without its
            # timeout still fails it: it hangs as long as the server is stalled
            assert time.monotonic() - started < 2
            sentinels.master.resume()
            sentinels.failover()
            # The client finds the new master by itself (its first call may see the old one
            # demoted, and retries); what was replicated is there.
            assert service.get(global_id="before").status.value == "held"
            assert hold(service, "after") == "held"
            assert adapter.stock("L").held == 2
        finally:
            service.close()


@pytest.mark.slow
def test_after_a_sentinel_failover_the_old_master_gets_no_write() -> None:
    """redis-py asks Sentinel for the master only when it opens a connection: after SENTINEL
    FAILOVER its pooled connections went on writing to the old master, which answers as a master
    until Sentinel demotes it (about 10 s here) and then throws those writes away in its resync
    with the new one: a hold answered 201 was lost (and the two masters counted the stock
    apart). Now a process asks Sentinel once a second, and drops its connections to the old
    master: a call made a second after Sentinel names the new master is made there."""
    with redis_sentinel() as sentinels:
        service = service_for(sentinels.url)
        try:
            adapter = stocked(service)
            assert hold(service, "before") == "held"  # a pooled connection to the master
            with sentinels.master.client() as master:
                master.wait(1, 5000)
            new_port = sentinels.failover()  # Sentinel names the replica, a master now
            # The process's watcher asks Sentinel every MASTER_CHECK_INTERVAL, from a thread of
            # its own: waited for until it has seen the new master (a fixed interval + 0.5 s was
            # not enough where the machine was slow to run the thread or Sentinel to answer).
            pool = service.ledger.client.connection_pool
            wait_for(
                lambda: pool.master_address == ("127.0.0.1", new_port),
                10 * MASTER_CHECK_INTERVAL,
                what="the watcher to see the new master",
            )
            with sentinels.master.client() as old:
                role = old.info("replication")["role"]  # "master" still, as a rule
            assert hold(service, "after") == "held"  # acknowledged: TEvo got 201
            record = KEYS.hold("after")[0]
            with sentinels.replica.client() as new:
                assert new.exists(record), f"the old master's role: {role}"
            # Sentinel demotes the old master in its own time: it resyncs from the new one.
            with sentinels.master.client() as old, sentinels.replica.client() as new:
                wait_for(lambda: old.info("replication").get("master_link_status") == "up", 30)
                wait_for(lambda: old.dbsize() == new.dbsize(), 10)
            assert service.get(global_id="after").status.value == "held"
            assert adapter.stock("L").held == 2
        finally:
            service.close()


@pytest.mark.slow
def test_a_silent_sentinel_listed_first_costs_a_call_its_time_budget_only() -> None:
    """A Sentinel that accepts connections and never answers (a frozen host), listed before a
    working one: the master is found through the next one within the call's time budget, as
    for the master's own connections (each Sentinel connection used to make redis-py's default
    ten retries with backoff: seven seconds)."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    try:
        with redis_sentinel() as sentinels:
            live = sentinels.url.split("://", 1)[1]
            url = f"redis+sentinel://127.0.0.1:{silent.getsockname()[1]},{live}"
            service = build_service(Settings(redis_url=url, api_keys=("k",), redis_timeout=0.5))
            try:
                started = time.monotonic()
                with pytest.raises(e.HoldNotFound):
                    service.get(global_id="g")
                assert time.monotonic() - started < 2.5  # (1 + RETRIES) attempts of 0.5 s, +
            finally:
                service.close()
    finally:
        silent.close()


@pytest.mark.slow
def test_a_sentinel_url_with_a_wrong_password_is_refused() -> None:
    with redis_sentinel(password="data-pw") as sentinels:
        service = service_for(sentinels.url.replace("data-pw", "wrong"))
        try:
            with pytest.raises(e.Unavailable, match="AuthenticationError"):
                service.get(global_id="x")
        finally:
            service.close()


def test_a_sentinel_url_at_a_plain_redis_is_unavailable_naming_the_mistake(
    redis_url: str,
) -> None:
    """redis+sentinel:// aimed at a Redis that is no Sentinel: 503 (Redis cannot be reached
    through that URL) saying what is wrong, not a 500 internal_error with Redis's answer to
    SENTINEL MASTERS ("unknown command") in the log only."""
    url = f"redis+sentinel://127.0.0.1:{port_of(redis_url)}/mymaster"
    app = create_app({"TEVO_HOLD_REDIS_URL": url, "TEVO_HOLD_API_KEYS": "k"})
    try:
        body = {"remote_id": "L", "quantity": 1, "global_id": "g"}
        answer = app.test_client().post("/v1/holds", json=body, headers={"X-API-Key": "k"})
        assert answer.status_code == 503, answer.json
        assert answer.json["code"] == "unavailable"
        assert "is not one (it answers unknown command 'SENTINEL')" in answer.json["detail"]
    finally:
        app.extensions[EXTENSION_KEY].service.close()


def test_a_cluster_node_reached_as_one_redis_is_a_configuration_error(tmp_path: Path) -> None:
    """A Redis in cluster mode behind redis:// (a managed service's one-shard cluster endpoint,
    say): the one-script path's keys lie in two slots, and the node refuses them. Not an
    internal error with Redis's words: the setting, and how to write it."""
    node = single_node_cluster(tmp_path)
    try:
        service = service_for(node.url)
        try:
            with pytest.raises(e.ConfigurationError, match=r"redis\+cluster://"):
                stocked(service)
                hold(service, "g")
        finally:
            service.close()
    finally:
        node.stop()


# -- a Unix socket --------------------------------------------------------------------------------


def test_a_unix_socket_url_serves_holds(tmp_path: Path) -> None:
    """``unix:///path.sock``, as the README offers it (it used to fail on its first call: TCP
    keepalive is no option of a Unix socket)."""
    sock = tmp_path / "redis.sock"
    server = RedisProcess(tmp_path, ["--unixsocket", str(sock), "--unixsocketperm", "700"])
    server.start()
    service = service_for(f"unix://{sock}")
    try:
        stocked(service)
        assert hold(service, "g") == "held"
        assert service.get(global_id="g").status.value == "held"
    finally:
        service.close()
        server.stop()


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(tmp_path: Path, certificates: dict[str, Path]) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path, tls=certificates)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_rediss_url_talks_tls_and_checks_the_certificate(
    tls_redis: RedisProcess, certificates: dict[str, Path]
) -> None:
    base = f"rediss://127.0.0.1:{tls_redis.port}/0"
    service = service_for(f"{base}?ssl_ca_certs={certificates['ca']}")
    untrusted = service_for(base)  # the system's CAs do not know the test's CA
    plain = service_for(f"redis://127.0.0.1:{tls_redis.port}/0")
    try:
        stocked(service)
        assert hold(service, "tls") == "held"
        with pytest.raises(e.Unavailable):
            untrusted.get(global_id="tls")
        with pytest.raises(e.Unavailable):
            plain.get(global_id="tls")
    finally:
        for each in (service, untrusted, plain):
            each.close()


@pytest.mark.slow
def test_a_rediss_cluster_url_talks_tls(tmp_path: Path, certificates: dict[str, Path]) -> None:
    node = single_node_cluster(tmp_path, tls=certificates)
    service = service_for(
        f"rediss+cluster://127.0.0.1:{node.port}?ssl_ca_certs={certificates['ca']}"
    )
    try:
        stocked(service)
        assert hold(service, "tls-cluster") == "held"
        assert isinstance(service.ledger.client, LazyRedisCluster)
    finally:
        service.close()
        node.stop()


# -- which driver errors are "Redis is unavailable" ----------------------------------------------

X = redis.exceptions

OUTAGES = [
    X.ConnectionError("Connection refused"),
    X.TimeoutError("Timeout reading from socket"),
    X.AuthenticationError("WRONGPASS"),
    X.BusyLoadingError("LOADING"),
    X.ReadOnlyError("READONLY You can't write against a read only replica."),
    X.TryAgainError("TRYAGAIN"),
    X.ClusterDownError("CLUSTERDOWN The cluster is down"),
    X.MasterDownError("MASTERDOWN Link with MASTER is down"),
    X.ClusterError("TTL exhausted."),
    X.SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
    X.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
    X.ResponseError("NOREPLICAS Not enough good replicas to write."),
    X.ResponseError("DB index is out of range"),  # the URL's /db: every connection is refused
    X.ResponseError("unknown command 'SENTINEL', with args beginning with: 'MASTERS'"),
]
BUGS = [
    X.ResponseError("ERR wrong number of arguments"),
    X.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    X.DataError("Invalid input"),
    ValueError("not Redis at all"),
]


def _cluster_unreachable() -> Exception:
    try:
        try:
            raise X.ConnectionError("Connection refused")
        except X.ConnectionError as exc:
            raise X.RedisClusterException("Redis Cluster cannot be connected.") from exc
    except X.RedisClusterException as exc:
        return exc


@pytest.mark.parametrize("exc", [*OUTAGES, _cluster_unreachable()], ids=repr)
def test_driver_errors_that_mean_redis_is_unreachable_are_unavailable(exc: Exception) -> None:
    with pytest.raises(e.Unavailable) as info, translate_errors():
        raise exc
    assert info.value.__cause__ is exc


@pytest.mark.parametrize("exc", BUGS, ids=repr)
def test_other_errors_pass_through(exc: Exception) -> None:
    with pytest.raises(type(exc)), translate_errors():
        raise exc


@pytest.mark.parametrize(
    ("first", "latched"),
    [(X.TimeoutError("stalled"), True), (X.OutOfMemoryError("OOM full"), False)],
    ids=["timeout", "oom"],
)
def test_within_fail_fast_a_slow_outage_stops_the_later_calls(
    first: Exception, latched: bool
) -> None:
    calls = []

    def call(outcome: Exception | None) -> None:
        with translate_errors():
            calls.append(outcome)
            if outcome is not None:
                raise outcome

    with fail_fast():
        with pytest.raises(e.Unavailable):
            call(first)
        if latched:
            with pytest.raises(e.Unavailable, match="earlier in this request"):
                call(None)
        else:
            call(None)
    assert len(calls) == (1 if latched else 2)
    call(None)  # outside the block: every call goes through


def test_the_embedded_store_drops_finished_holds_after_their_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fakeredis drops an expired key only when it is read; Redis by itself. Unswept, every
    finished hold of a long-running demo server stayed in memory for good."""
    from tevo_hold import connection

    monkeypatch.setattr(connection, "SWEEP_INTERVAL", 0.02)
    # Long enough that nothing lapses while the holds are still being made, however slow the
    # machine (with 0.05 s, a loaded CI runner swept the first before the count below).
    settings = Settings(retention=2.0, hold_ttl=2.0)
    service = build_service(settings)
    server = service.ledger.client.connection_pool.connection_kwargs["server"]
    store = server.dbs[0]._dict  # what the store holds, read without expiring anything
    before = len(store)
    for n in range(50):
        service.hold(remote_id="demo-1", quantity=1, global_id=f"g{n}")
        service.release(global_id=f"g{n}")
    assert len(store) > before + 50
    deadline = time.monotonic() + 15
    while len(store) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(store) == before  # the listings alone, as Redis would keep


# -- the embedded store says so where it is made ---------------------------------------------


class _CountingPos(RecordingPos):
    """A POS adapter of the vendor's: its calls on the class, those of every instance seen."""

    calls: ClassVar[list[tuple[str, str]]] = []  # type: ignore[misc]


def _embedded_store_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "this process's memory" in r.getMessage()
    ]


def test_build_service_on_the_embedded_default_says_so_once_per_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A vendor's script or task queue worker whose environment lacks TEVO_HOLD_REDIS_URL got a
    store of its own per process, and nothing said so (only TevoHold did)."""
    caplog.set_level(logging.INFO, logger="tevo_hold")
    settings = Settings.from_env({})
    build_service(settings).close()
    connect(settings).close()
    said = _embedded_store_records(caplog)
    assert [r.levelno for r in said] == [logging.WARNING] * 2
    assert "TEVO_HOLD_REDIS_URL" in said[0].getMessage()


def test_build_service_on_the_embedded_default_with_a_pos_adapter_says_what_it_risks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each process's own ledger in front of one real POS: a retry in another process calls
    the POS's hold again, and no worker releases a lapsed hold in the POS."""
    caplog.set_level(logging.INFO, logger="tevo_hold")
    _CountingPos.calls.clear()
    settings = Settings.from_env({"TEVO_HOLD_ADAPTER": "tests.test_connection:_CountingPos"})
    first, second = build_service(settings), build_service(settings)  # two processes' worth
    try:
        first.hold(remote_id="L", quantity=2, global_id="order-1")
        assert not second.hold(remote_id="L", quantity=2, global_id="order-1").replayed
        assert _CountingPos.calls == [("hold", "order-1"), ("hold", "order-1")]  # what it risks
    finally:
        first.close()
        second.close()
    said = _embedded_store_records(caplog)
    assert [r.levelno for r in said] == [logging.ERROR] * 2
    message = said[0].getMessage()
    assert "TEVO_HOLD_REDIS_URL" in message and "tests.test_connection:_CountingPos" in message
    assert "calls the POS's hold again" in message and "build_service does not" in message
