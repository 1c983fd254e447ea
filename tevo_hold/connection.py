"""Redis clients from a URL: one Redis, a Redis Cluster, or a master found through Sentinel.

Every client answers within a bounded time when Redis is down or stalled, so the API can answer
``503 unavailable`` within a second: each attempt (connect, or wait for a reply) is bounded by
``TEVO_HOLD_REDIS_TIMEOUT`` seconds, and a call makes at most ``1 + RETRIES`` attempts, with a
short jittered pause between them. (The per-request rule that a request stops calling Redis
after its first failure is in :func:`tevo_hold._redis.fail_fast`.)

URL forms (see the README):

- ``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``: one Redis;
- ``redis+cluster://[user:pass@]host:port[,host:port...]``, ``rediss+cluster://...`` (TLS): a
  Redis Cluster, any of whose nodes may be given (the others are discovered);
- ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]``: the master of
  ``service_name`` as the Sentinels at those addresses know it, asked again every second so
  that no connection stays with a master that was failed over (credentials are the master's;
  ``?sentinel_password=...`` if the Sentinels want one too).

Query parameters are passed to redis-py as ``redis://`` URLs pass them (``?ssl_ca_certs=...``).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection
from functools import cache
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis._parsers.encoders import Encoder
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, NodesManager, RedisCluster
from redis.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ._redis import NOT_FORMED, RedisClient, _is_outage
from .adapters.redis_inventory import SAMPLE_INVENTORY, RedisInventoryAdapter, load_inventory
from .errors import ConfigurationError
from .keys import KeySpace
from .settings import Settings, embedded_url

__all__ = ["RETRIES", "LazyRedisCluster", "RedisClient", "check_url", "connect", "in_process"]

log = logging.getLogger("tevo_hold")

#: Extra attempts after a connection error or timeout (redis-py's own default is 3 to 10).
RETRIES = 1

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)


def connect(settings: Settings) -> RedisClient:
    """A client for ``settings.redis_url``.

    ``memory://`` gives an in-process fakeredis that runs the same Lua scripts (the embedded
    default: nothing is shared with other processes, nothing survives a restart), a new store
    each call; with the reference adapter it starts with the listings of
    ``TEVO_HOLD_INVENTORY_FILE``, or the demo listings the package ships. Other URLs
    give a redis-py client whose every attempt is bounded by ``redis_timeout`` seconds, with
    ``RETRIES`` retry on connection errors and timeouts. No client connects before its first
    command, so a process starts even while Redis is down, and works once it is back.
    """
    url = settings.redis_url
    if embedded_url(url):  # memory:// only: another spelling is a ConfigurationError
        return _embedded(settings)
    scheme = url.split("://", 1)[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return _cluster(url, settings)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(url, settings)
    url = _plain(url)
    options = _socket_options(settings)
    if scheme == "unix":  # redis-py's Unix socket connections take no TCP keepalive
        del options["socket_keepalive"]
    return redis.Redis.from_url(url, retry=_retry(), **options)


def check_url(url: str) -> None:
    """Raise ConfigurationError if no client can be made of ``url``, a TEVO_HOLD_REDIS_URL of
    one of the Redis schemes: a port that is not 1 to 65535, a database that is not a number, a
    query parameter that redis-py does not take or cannot read.

    :meth:`Settings.check <tevo_hold.settings.Settings.check>` asks it, so such a URL stops the
    server and every command at start-up with one line naming the setting, not with a driver's
    traceback at the first call (nor, for a database that is no number, on database 0). The
    message names the part at fault, never the URL's text: that may hold a password.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme in CLUSTER_SCHEMES:
        _cluster_options(url)
    elif scheme in SENTINEL_SCHEMES:
        _sentinel_options(url)
    else:
        _plain(url)


#: Why a URL's port may not be one: an unencoded / ? or # ends the host part early.
_PORT_HINT = "a password holding /, ? or # must be percent-encoded: %2F, %3F, %23"


def _plain(url: str) -> str:
    """``url``, a redis://, rediss:// or unix:// URL, checked (see :func:`check_url`), with its
    scheme in lower case (as redis-py reads it)."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    parts = urlsplit(f"{scheme}://{rest}")
    if scheme == "unix":
        _check_query(parts.query, _connection_options(UnixDomainSocketConnection))
        return f"{scheme}://{rest}"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigurationError(
            f"TEVO_HOLD_REDIS_URL: its port must be a number from 1 to 65535 ({_PORT_HINT})"
        )
    if not re.fullmatch(r"/?([0-9]+/?)?", unquote(parts.path)):
        raise ConfigurationError(
            "TEVO_HOLD_REDIS_URL: its path is not a database number: write "
            f"{scheme}://host:port/db, db a number (0 to 15 on a Redis of default settings)"
        )
    connection = SSLConnection if scheme == "rediss" else Connection
    _check_query(parts.query, _connection_options(connection))
    return f"{scheme}://{rest}"


@cache
def _connection_options(connection: type[AbstractConnection]) -> frozenset[str]:
    """The options a URL's query may give a pool of ``connection``s: those of its class (and
    of the classes it derives from) and the pool's own. Another one raises TypeError when the
    first connection is made."""
    names = {"max_connections"}
    for cls in connection.__mro__:
        if "__init__" in vars(cls):
            for name, param in inspect.signature(vars(cls)["__init__"]).parameters.items():
                if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                    names.add(name)
    return frozenset(names)


#: How a query parameter that redis-py reads is written, for the error naming one that is not.
_KINDS: dict[Any, str] = {int: "a whole number, zero or more", float: "a number, zero or more"}


def _check_query(query: str, accepted: Collection[str]) -> None:
    """ConfigurationError for a query parameter that is not one of ``accepted`` (named only
    when it is a near miss of one: a name that is none may be a piece of a password), or whose
    value redis-py cannot read, or reads as a number below zero."""
    for name, values in parse_qs(query).items():
        if name not in accepted:
            near = difflib.get_close_matches(name, sorted(accepted), n=1)
            hint = f": did you mean {near[0]}?" if near else ""
            raise ConfigurationError(
                "TEVO_HOLD_REDIS_URL: a query parameter is none of the options redis-py "
                f"takes{hint}"
            )
        parser: Callable[[str], Any] | None = URL_QUERY_ARGUMENT_PARSERS.get(name)  # type: ignore[assignment]
        if parser is None:
            continue
        try:
            value = parser(values[0])
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(value, int | float) and not (math.isfinite(value) and value >= 0):
            raise ConfigurationError(
                f"TEVO_HOLD_REDIS_URL: its query parameter {name} must be "
                f"{_KINDS.get(parser, 'a value redis-py reads')}"
            )


def _socket_options(settings: Settings) -> dict[str, Any]:
    timeout = settings.redis_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        # No PING before a command on a connection idle for a while: it would be one more
        # round trip (with retries of its own) inside the time budget. A dead pooled connection
        # fails its command instead, and the retry reconnects.
        "health_check_interval": 0,
    }


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), RETRIES)


def _split(url: str, scheme: str) -> tuple[str, list[tuple[str, int]], str, str]:
    """``scheme://[userinfo@]h:p[,h:p...][/path][?query]`` → userinfo, nodes, path, query."""
    rest = url[len(scheme) + 3 :]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:7000
        # (the item is not shown: a password holding / would put part of it there)
        if not colon or not host or not re.fullmatch("[0-9]{1,5}", port) or int(port) > 65535:
            raise ConfigurationError(
                f"TEVO_HOLD_REDIS_URL: an address of the {scheme}:// URL is not host:port, a port "
                f"from 1 to 65535 ({_PORT_HINT})"
            )
        nodes.append((unquote(host), int(port)))
    return (userinfo if at else ""), nodes, path if slash else "", query


def _redis_options(scheme: str, userinfo: str, query: str, host: str, port: int) -> dict[str, Any]:
    """redis-py's options for a plain URL of ``host:port`` with these credentials and query."""
    plain = "rediss" if scheme.startswith("rediss") else "redis"
    auth = f"{userinfo}@" if userinfo else ""
    netloc = f"[{host}]" if ":" in host else quote(host)
    url = f"{plain}://{auth}{netloc}:{port}/" + (f"?{query}" if query else "")
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    for key in ("host", "port", "db"):
        options.pop(key, None)
    if options.pop("connection_class", None) is not None:  # rediss: the cluster's nodes take
        options["ssl"] = True  # ssl=True, not the connection class a rediss:// URL gives
    return options


def _cluster_options(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes of a redis+cluster:// or rediss+cluster:// URL, and the options of its query."""
    scheme = url.split("://", 1)[0].lower()
    userinfo, nodes, path, query = _split(url, scheme)
    if path.strip("/") not in ("", "0") or parse_qs(query).get("db", ["0"])[0] != "0":
        raise ConfigurationError(
            "TEVO_HOLD_REDIS_URL: a Redis Cluster has database 0 only: drop the URL's database"
        )
    # The cluster's client drops the options it does not know: one that nothing in redis-py
    # takes is a misspelling, which would be dropped silently (an ssl_ca_cert, say).
    known = _connection_options(SSLConnection) | set(REDIS_ALLOWED_KEYS)
    _check_query(query, known)
    return nodes, _redis_options(scheme, userinfo, query, *nodes[0])


def _cluster(url: str, settings: Settings) -> RedisCluster:
    nodes, url_options = _cluster_options(url)
    options = {**_socket_options(settings), **url_options}
    return LazyRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
        # The cluster client retries a command once after a connection error, a timeout or a
        # CLUSTERDOWN (its connections to each node make no retries of their own), and reads
        # the topology again after a failed node, in the background (see LazyRedisCluster).
        retry=_retry(),
        require_full_coverage=False,
        **options,
    )


def _sentinel_options(
    url: str,
) -> tuple[list[tuple[str, int]], str, int, dict[str, str], dict[str, Any]]:
    """A redis+sentinel:// URL's Sentinels, service name, database, the Sentinels' credentials
    and the master's options."""
    scheme = url.split("://", 1)[0].lower()
    userinfo, nodes, path, query = _split(url, scheme)
    parts = [p for p in path.split("/") if p]
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and not re.fullmatch("[0-9]+", parts[1])):
        raise ConfigurationError(  # (the path is not shown: it may hold a piece of a password)
            "TEVO_HOLD_REDIS_URL: expected redis+sentinel://host:port[,host:port...]/"
            "service_name[/db], db a number"
        )
    service = unquote(parts[0])
    db = int(parts[1]) if len(parts) == 2 else 0
    params = [p for p in query.split("&") if p]
    sentinel_auth = {}
    for key in ("sentinel_username", "sentinel_password"):
        for param in list(params):
            name, _, value = param.partition("=")
            if name == key:
                sentinel_auth[key.removeprefix("sentinel_")] = unquote(value)
                params.remove(param)
    master_query = "&".join(params)
    _check_query(master_query, _connection_options(Connection))
    host, port = nodes[0]
    return (
        nodes,
        service,
        db,
        sentinel_auth,
        _redis_options(scheme, userinfo, master_query, host, port),
    )


def _sentinel(url: str, settings: Settings) -> redis.Redis:
    nodes, service, db, sentinel_auth, master = _sentinel_options(url)
    sockets = _socket_options(settings)
    # Each Sentinel connection retries as the master's do (redis-py's default, 10 retries with
    # backoff, would take seconds per dead Sentinel, past the time a call may take).
    sentinel_kwargs = {**sockets, **sentinel_auth, "retry": _retry()}
    sentinels = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        service, db=db, retry=_retry(), **{**sockets, **master}
    )
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    pool = weakref.ref(client.connection_pool)
    start_daemon(
        "tevo-hold-sentinel-watch", lambda: _watch_master(pool), alive=lambda: pool() is not None
    )
    return client


#: Seconds between two questions to Sentinel about the master's address (see _watch_master).
MASTER_CHECK_INTERVAL = 1.0


def _watch_master(pool_ref: weakref.ref[SentinelConnectionPool]) -> None:
    """Ask Sentinel for the master's address every MASTER_CHECK_INTERVAL, until the pool is
    gone; when it changed, drop the pool's connections to the old master.

    redis-py asks Sentinel only when it opens a connection: after a failover its pooled
    connections went on writing to the old master, which answers as a master until Sentinel
    demotes it (seconds later; never, while it is cut off from Sentinel), and whose writes are
    then thrown away by its resync with the new one, holds and sales that were acknowledged;
    while connections opened meanwhile wrote to the new master, two masters counting the same
    stock. Now a process writes to the old master at most about MASTER_CHECK_INTERVAL after
    Sentinel names the new one: the pool's idle connections are closed at once (redis-py's
    ``get_master_address`` does that when the address changed), one in use when it is given
    back. (A Redis that refuses writes without a replica, ``min-replicas-to-write``, closes the
    rest of the window: see docs/operations.md.)
    """
    while True:
        time.sleep(MASTER_CHECK_INTERVAL)
        pool = pool_ref()
        if pool is None:
            return
        try:
            before = pool.master_address
            if before is not None:  # None: no connection made yet, none to drop
                after = pool.get_master_address()  # type: ignore[no-untyped-call]
                if after != before:
                    log.warning(
                        "Sentinel names a new master of %r, %s:%s (was %s:%s): the connections "
                        "to the old one are dropped",
                        pool.service_name,
                        *after,
                        *before,
                    )
        except Exception as exc:  # Sentinels unreachable: the connections go on as they are
            log.debug("asking Sentinel for the master's address failed: %r", exc)
        del pool


class LazyRedisCluster(RedisCluster):
    """A :class:`RedisCluster` that reads the cluster's topology on first use, and re-reads it
    in the background after a node failed.

    redis-py's client connects to the cluster when it is made, and raises if no node answers;
    this one waits for its first command (which then raises, translated into
    :class:`~tevo_hold.errors.Unavailable`, until a node answers; within a second of a failed
    attempt, at once). So a server process starts, and its gunicorn workers boot, even while
    the cluster is unreachable, or up but not formed yet (no node serves a slot).

    After a connection error or a timeout on a node, redis-py reads the topology again before
    it raises, asking every node in turn: with the whole cluster stalled or cut off, that is one
    timeout per node on top of the command's own. Here that refresh runs in a thread of its own
    (one at a time), so a command fails within its own attempts' time, and the commands after
    the refresh use the new topology (a failed-over master's replica).
    """

    def __init__(self, **kwargs: Any) -> None:  # redis-py's own init runs on first use
        self.__dict__["_lazy_kwargs"] = kwargs
        self.__dict__["_lazy_lock"] = threading.RLock()
        self.__dict__["_lazy_initializer"] = None
        self.__dict__["_lazy_failure"] = None  # (when, error) of the last failed first use

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set yet: every one of redis-py's is set by its init.
        # While that init runs, its own look-ups of attributes it has not set yet fail as
        # usual; other threads wait for it.
        state = self.__dict__
        if name.startswith("_lazy") or state["_lazy_initializer"] == threading.get_ident():
            raise AttributeError(name)
        with state["_lazy_lock"]:
            if "nodes_manager" not in state:
                self._lazy_init()
        return object.__getattribute__(self, name)

    def _lazy_init(self) -> None:
        state = self.__dict__
        failure = state["_lazy_failure"]
        if failure is not None and time.monotonic() - failure[0] < RETRY_FIRST_USE_AFTER:
            raise redis.exceptions.ConnectionError(
                f"the Redis Cluster could not be reached a moment ago: {failure[1]}"
            )
        state["_lazy_initializer"] = threading.get_ident()
        try:
            try:
                RedisCluster.__init__(self, **state["_lazy_kwargs"])
            except IndexError as exc:
                # redis-py's reading of the topology finds no master when no node serves a
                # slot: a cluster whose nodes are up but not joined yet (before `redis-cli
                # --cluster create`). Unavailable until it is formed, as a cluster down is.
                raise redis.exceptions.ClusterDownError(NOT_FORMED) from exc
        except Exception as exc:
            if _is_outage(exc):
                state["_lazy_failure"] = (time.monotonic(), exc)
            raise
        finally:
            state["_lazy_initializer"] = None
        state["_lazy_failure"] = None
        _refresh_in_background(self.nodes_manager)

    def get_encoder(self) -> Encoder:
        """The encoder of the cluster's connections (scripts hash with it), with no connection."""
        kwargs = self.__dict__["_lazy_kwargs"]
        return Encoder(  # type: ignore[no-untyped-call]
            kwargs.get("encoding", "utf-8"),
            kwargs.get("encoding_errors", "strict"),
            kwargs.get("decode_responses", False),
        )

    def close(self) -> None:
        if "nodes_manager" in self.__dict__:
            super().close()


#: Seconds a cluster client that could not read the topology at first use fails at once.
RETRY_FIRST_USE_AFTER = 1.0


def _refresh_in_background(manager: NodesManager) -> None:
    """Make the topology refreshes redis-py runs after a node failed run in a thread."""
    refresh = manager.initialize
    running = threading.Lock()

    def initialize(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("last_failed_node_name") is None:  # bootstrap, MOVED: as redis-py does
            refresh(*args, **kwargs)
            return
        if not running.acquire(blocking=False):
            return  # one is under way

        def run() -> None:
            try:
                refresh(*args, **kwargs)
            except Exception as exc:  # the next failure tries again
                log.info("reading the Redis Cluster's topology failed: %r", exc)
            finally:
                running.release()

        threading.Thread(target=run, name="tevo-hold-cluster-refresh", daemon=True).start()

    manager.initialize = initialize  # type: ignore[method-assign]


def in_process(client: RedisClient) -> bool:
    """True when ``client``'s store lives in this process's memory (``memory://``: fakeredis),
    where no other process can see it."""
    fakeredis = sys.modules.get("fakeredis")  # not imported: no client can be one of its
    return fakeredis is not None and isinstance(client, fakeredis.FakeRedis)


def _embedded(settings: Settings) -> redis.Redis:
    try:
        import fakeredis
        import lupa  # noqa: F401 - fakeredis runs Lua only with lupa installed
    except ImportError as exc:
        raise ConfigurationError(
            "TEVO_HOLD_REDIS_URL is unset, so tevo-hold would run on its embedded in-memory "
            "default, which needs the 'memory' extra: pip install 'tevo_hold[memory]'. "
            "In production, set TEVO_HOLD_REDIS_URL to your Redis instead."
        ) from exc
    client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    _warn_of_the_embedded_store(settings)
    store = weakref.ref(client)
    start_daemon("tevo-hold-memory-sweep", lambda: _sweep(store), alive=lambda: store() is not None)
    if settings.adapter == "reference":
        # Stocked here, where the store is made, so that every way to the embedded default
        # (create_app, a TevoHold of your own, build_service, connect) starts with the same.
        inventory = RedisInventoryAdapter(
            client, keys=KeySpace(settings.key_prefix), retention=settings.retention
        )
        load_inventory(inventory, settings.inventory_file or SAMPLE_INVENTORY)
    return client


def _warn_of_the_embedded_store(settings: Settings) -> None:
    """Say, once per store made (here, where every way to it passes: create_app, TevoHold,
    build_service, connect), that its state is this process's only. A vendor's script or task
    queue worker whose environment lacks TEVO_HOLD_REDIS_URL got a ledger of its own per
    process, silently. Louder with a POS adapter of the vendor's: a real POS is then called
    from a ledger no other process shares."""
    if settings.adapter == "reference":
        log.warning(
            "tevo-hold runs on its embedded default (TEVO_HOLD_REDIS_URL unset, or memory://): "
            "state lives in this process's memory, is not shared with other processes and is "
            "lost at exit. For trying it out only: set TEVO_HOLD_REDIS_URL to use Redis."
        )
        return
    log.error(
        "tevo-hold runs on its embedded default (TEVO_HOLD_REDIS_URL unset, or memory://) with "
        "TEVO_HOLD_ADAPTER=%s, a POS of your own: the ledger lives in this process's memory, "
        "so a retry that reaches another process calls the POS's hold again, and lapsed holds "
        "are released in the POS (failed invoices retried) only by a worker thread of this "
        "process, which TevoHold runs and build_service does not (tevo-hold worker cannot "
        "reach this store); what is owed to the POS is lost at exit. For trying it out only: "
        "set TEVO_HOLD_REDIS_URL and run tevo-hold worker.",
        settings.adapter,
    )


def start_daemon(name: str, run: Callable[[], object], *, alive: Callable[[], bool]) -> None:
    """Run ``run`` in a daemon thread of this process, and again in each process forked from it
    while ``alive()``. Threads do not survive a fork: a server that loads the app and then forks
    its workers (gunicorn --preload, uWSGI) would serve requests in a process without them."""

    def start() -> None:
        threading.Thread(target=run, name=name, daemon=True).start()

    def after_fork() -> None:
        if alive():
            start()

    start()
    os.register_at_fork(after_in_child=after_fork)


#: Seconds between two sweeps of the embedded store (see _sweep).
SWEEP_INTERVAL = 1.0


def _sweep(client_ref: weakref.ref[redis.Redis]) -> None:
    """Drop the embedded store's keys whose TTL passed, every SWEEP_INTERVAL, until the client
    is gone. fakeredis drops an expired key only when it is read (or the keys are counted),
    where Redis drops them by itself: without this, every finished hold's record, trail and
    sale marker stayed in memory for good, a few KB per hold."""
    while True:
        time.sleep(SWEEP_INTERVAL)
        client = client_ref()
        if client is None:
            return
        try:
            client.dbsize()  # counting the keys drops the expired ones (a heap: cheap)
        except Exception:  # pragma: no cover - fakeredis in memory does not fail; never die
            log.exception("sweeping the embedded store failed")
        del client
