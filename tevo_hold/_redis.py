"""Lua script loading, reply decoding, and the one place redis-py errors are translated."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.resources
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from functools import cache
from typing import Any, ParamSpec, TypeAlias, TypeVar

import redis
import redis.exceptions
from redis.cluster import RedisCluster

from . import errors

__all__ = [
    "SCRIPTS",
    "Charge",
    "RedisClient",
    "Script",
    "charge_next_call",
    "fail_fast",
    "source",
    "translate_errors",
]

P = ParamSpec("P")
R = TypeVar("R")

#: What tevo-hold keeps its state in: one Redis (or a master through Sentinel), or a cluster.
RedisClient: TypeAlias = redis.Redis | RedisCluster

#: Error codes a script may answer with, and the exception each one raises.
SCRIPT_ERRORS: dict[str, type[errors.TevoHoldError]] = {
    cls.code: cls
    for cls in (
        errors.ListingNotFound,
        errors.HoldNotFound,
        errors.InsufficientQuantity,
        errors.GlobalIdConflict,
        errors.HoldReleased,
        errors.HoldAlreadyInvoiced,
        errors.OrderIdConflict,
        errors.RequestInProgress,
        errors.HoldExpired,
    )
}

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError, "TTL exhausted"
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.OutOfMemoryError,  # full (maxmemory, noeviction): a script writes nothing
)


#: Outages that Redis answered at once, with an error reply: they cost no time, so they do not
#: stop a request's later calls (the clean-up after OOM deletes, which a full Redis allows).
_ANSWERED = (
    redis.exceptions.ResponseError,  # READONLY, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, OOM
    redis.exceptions.BusyLoadingError,
)


#: Redis's answer to a connection's SELECT of a database it does not have: TEVO_HOLD_REDIS_URL
#: names one past its ``databases`` setting, and every connection is refused (as with a wrong
#: password, an AuthenticationError), until the setting is put right.
_NO_SUCH_DATABASE = "DB index is out of range"

#: A plain Redis's answer to the Sentinel client's first question (SENTINEL MASTERS): a
#: redis+sentinel:// URL names a Redis (or a cluster node) where its Sentinels should be. Every
#: call fails so until the URL is put right; the answer names the likely mistake.
_NOT_A_SENTINEL = re.compile(r"unknown command [`']sentinel[`']", re.IGNORECASE)

#: The cluster client's words for a redis+cluster:// URL that reaches a Redis not in cluster
#: mode (the opposite mistake of a cluster node behind redis://, CROSSSLOT below).
_NOT_A_CLUSTER = "Cluster mode is not enabled"

#: Why a cluster client could not read the topology of a cluster whose nodes are up but not
#: joined yet, no node serving a slot (see LazyRedisCluster): unavailable until it is formed.
NOT_FORMED = "no node of the Redis Cluster serves a slot yet: is it formed?"


def _is_outage(exc: BaseException) -> bool:
    """True for an error that means Redis (or part of a cluster) could not be reached."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        # NOREPLICAS: min-replicas-to-write, a master that lost its replicas refuses writes;
        # MISCONF: a Redis that cannot save its snapshots (a full disk) refuses writes; BUSY:
        # another client's script runs past lua-time-limit. Each passes, and says so. And a
        # database the Redis does not have (TEVO_HOLD_REDIS_URL's /db): see _NO_SUCH_DATABASE.
        # And a redis+sentinel:// URL whose addresses are no Sentinels' (see _NOT_A_SENTINEL).
        text = str(exc)
        return (
            text.startswith(("NOREPLICAS", "MISCONF", "BUSY "))
            or _NO_SUCH_DATABASE in text
            or _NOT_A_SENTINEL.search(text) is not None
        )
    if isinstance(exc, redis.exceptions.RedisClusterException):
        # The cluster client's own errors are mostly bugs (keys of two slots, say), except
        # "Redis Cluster cannot be connected" and "All slots are not covered", raised while
        # reading the topology with nodes down: those come from connection errors, or say so.
        cause = exc.__cause__ or exc.__context__
        return isinstance(cause, _UNAVAILABLE) or "not covered" in str(exc)
    return False


#: Within :func:`fail_fast`: the outage the current request met, once it met one.
_outage: ContextVar[list[BaseException] | None] = ContextVar("tevo_hold_outage", default=None)


class fail_fast:  # a class used as a function (a decorator factory and context manager)
    """Within this block, once a Redis call found Redis unreachable, later ones fail at once.

    One failed call already took the time a call may take (its attempts' timeouts); the calls a
    request makes after a failure are best-effort clean-ups that the lease and the worker stand
    in for, so a request answers ``503`` within one call's time even when Redis dies half-way
    through. (An error Redis answered at once, such as OOM, does not count: it cost no time.)

    ``with fail_fast():`` or ``@fail_fast()``; the decorator costs one context variable set and
    reset per call (it is on every call of the service).
    """

    def __init__(self) -> None:
        self._tokens: list[Token[list[BaseException] | None]] = []

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def within(*args: P.args, **kwargs: P.kwargs) -> R:
            token = _outage.set([])
            try:
                return func(*args, **kwargs)
            finally:
                _outage.reset(token)

        return within

    def __enter__(self) -> None:
        self._tokens.append(_outage.set([]))

    def __exit__(self, *exc: object) -> None:
        _outage.reset(self._tokens.pop())


def _unavailable(exc: Exception, outage: list[BaseException] | None) -> errors.Unavailable:
    """``exc`` as Unavailable if it is an outage (noted for fail_fast); ConfigurationError if
    it says TEVO_HOLD_REDIS_URL is of the wrong kind for the Redis it reaches (a cluster's node
    as one Redis, or the reverse); else re-raise it."""
    if isinstance(exc, redis.exceptions.ClusterCrossSlotError):  # CROSSSLOT
        # A Redis in cluster mode reached as one Redis (redis://: a managed service's single
        # shard, say): it refuses the keys of a hold and of its listing in one script.
        raise errors.ConfigurationError(
            "TEVO_HOLD_REDIS_URL reaches a Redis in cluster mode as a single Redis: write "
            "redis+cluster://host:port (rediss+cluster:// for TLS)."
        ) from exc
    if isinstance(exc, redis.exceptions.RedisClusterException) and _NOT_A_CLUSTER in str(exc):
        raise errors.ConfigurationError(
            "TEVO_HOLD_REDIS_URL names a Redis Cluster (redis+cluster://), but the Redis it "
            "reaches is not in cluster mode: write redis://host:port/db (rediss:// for TLS)."
        ) from exc
    if not _is_outage(exc):
        raise exc
    if outage is not None and not isinstance(exc, _ANSWERED):
        outage.append(exc)
    return errors.Unavailable(f"Redis is unavailable: {_name(exc)}")


def _outage_so_far() -> list[BaseException] | None:
    """The outage list of the current fail_fast block; Unavailable if it holds one already."""
    outage = _outage.get()
    if outage:
        raise errors.Unavailable(
            f"Redis is unavailable: {type(outage[0]).__name__} earlier in this request"
        )
    return outage


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's "could not reach Redis" errors into :class:`errors.Unavailable`."""
    outage = _outage_so_far()
    try:
        yield
    except Exception as exc:
        raise _unavailable(exc, outage) from exc


def _name(exc: BaseException) -> str:
    """The kind of an outage, for the problem's detail: its class, or Redis's error code."""
    if type(exc) is redis.exceptions.ResponseError:
        if _NO_SUCH_DATABASE in str(exc):
            return (
                f"it has no database of the number TEVO_HOLD_REDIS_URL gives ({_NO_SUCH_DATABASE}"
                "): its databases are 0 to its `databases` setting less one (0 to 15 by default)"
            )
        if _NOT_A_SENTINEL.search(str(exc)):
            return (
                "a server TEVO_HOLD_REDIS_URL (redis+sentinel://) names as a Sentinel is not one "
                "(it answers unknown command 'SENTINEL'): give the Sentinels' addresses (port "
                "26379 by default), or write redis://host:port/db for a single Redis"
            )
        return str(exc).split(" ", 1)[0]  # NOREPLICAS
    if isinstance(exc, redis.exceptions.ClusterDownError) and str(exc) == NOT_FORMED:
        return f"ClusterDownError ({NOT_FORMED})"
    return type(exc).__name__


#: Each script: the files of ``tevo_hold/lua/`` it is assembled from, libraries first.
#: Every script opens with _prelude.lua (the clock) and _charge.lua (a rate-limit charge).
SCRIPTS: dict[str, tuple[str, ...]] = {
    "ledger": ("_prelude.lua", "_charge.lua", "_ledger.lua", "ledger.lua"),
    "inventory": ("_prelude.lua", "_charge.lua", "_inventory.lua", "inventory.lua"),
    "fused": ("_prelude.lua", "_charge.lua", "_ledger.lua", "_inventory.lua", "fused.lua"),
    "apikeys": ("_prelude.lua", "_charge.lua", "apikeys.lua"),
    "charge": ("_prelude.lua", "_charge.lua", "charge.lua"),
}


@dataclass(frozen=True, slots=True)
class Charge:
    """A rate-limit charge for the next script call (see :func:`charge_next_call`).

    ``keys`` the limits' Redis keys, ``limits`` each one's (amount, period in ms), ``names`` each
    one as text (``"600 per 1 minute"``), for the RateLimited it may raise.
    """

    keys: tuple[str, ...]
    limits: tuple[tuple[int, int], ...]
    names: tuple[str, ...]

    #: The arguments that precede the script's own (see _charge.lua), made once per charge.
    argv: tuple[str | int, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        argv = ("!charge", len(self.keys), *(n for limit in self.limits for n in limit))
        object.__setattr__(self, "argv", argv)  # frozen: set once, here

    def refused(self, reply: Sequence[Any]) -> errors.RateLimited:
        """The error for _charge.lua's ``{'rate_limited', now, retry_ms, i}``."""
        seconds = max(1, math.ceil(int(reply[2]) / 1000))
        limit = self.names[int(reply[3]) - 1]
        return errors.RateLimited(
            f"Too many requests for this API key ({limit}); retry in {seconds} s.",
            retry_after=seconds,
            limit=limit,
        )


#: The charge the current request's next script call is to make, if any.
_charge: ContextVar[Charge | None] = ContextVar("tevo_hold_charge", default=None)


def charge_next_call(charge: Charge | None) -> None:
    """Charge ``charge`` to the next :class:`Script` call in this context (None: no charge).

    That call is refused with RateLimited, having run nothing, if any of the charge's limits is
    spent; otherwise the charge is made in the same atomic step as the call (on a cluster, where
    the two lie in different slots, in a call of its own just before). Only one call is charged.
    """
    _charge.set(charge)


@cache
def source(name: str) -> str:
    """The text of script ``name``: its files of ``tevo_hold/lua/`` joined in order."""
    lua = importlib.resources.files("tevo_hold").joinpath("lua")
    return "\n".join(lua.joinpath(part).read_text("utf-8") for part in SCRIPTS[name])


class Script:
    """One script of :data:`SCRIPTS`, called by its SHA1 (EVALSHA), loaded again on NOSCRIPT.

    (Not redis-py's ``register_script``: its call goes through three more layers and an import
    on every call, a few microseconds that every request would pay.)
    """

    def __init__(self, client: RedisClient, name: str) -> None:
        self._text = source(name)
        self._sha = hashlib.sha1(self._text.encode("utf-8")).hexdigest()
        self._client = client
        # On a cluster a charge's keys and the script's lie in different slots: the charge is
        # made by a call of its own, just before.
        self._charger: Script | None = None
        self._alone = isinstance(client, RedisCluster)

    def __call__(self, keys: Sequence[str], args: Sequence[str | int | float]) -> list[Any]:
        charge = _charge.get()
        if charge is None:
            return self._run(keys, args)
        _charge.set(None)
        if self._alone:
            if self._charger is None:
                self._charger = Script(self._client, "charge")
            self._check(charge, self._charger._run(charge.keys, charge.argv))
            return self._run(keys, args)
        return self._check(charge, self._run([*keys, *charge.keys], [*charge.argv, *args]))

    def _run(self, keys: Sequence[str], args: Sequence[str | int | float]) -> list[Any]:
        outage = _outage_so_far()  # translate_errors, inlined: this is every script call
        try:
            try:
                reply = self._evalsha(keys, args)
            except redis.exceptions.NoScriptError:
                # Redis restarted, failed over or flushed its scripts: load it (on a cluster,
                # into every master) and call again
                self._client.script_load(self._text)
                reply = self._evalsha(keys, args)
        except Exception as exc:
            raise _unavailable(exc, outage) from exc
        return [item.decode("utf-8") if isinstance(item, bytes) else item for item in reply]

    def _evalsha(self, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        execute: Callable[..., Any] = self._client.execute_command  # untyped in redis-py
        return execute("EVALSHA", self._sha, len(keys), *keys, *args)

    @staticmethod
    def _check(charge: Charge, reply: list[Any]) -> list[Any]:
        if reply and reply[0] == "rate_limited":
            raise charge.refused(reply)
        return reply
