"""Lua script loading, reply decoding, and the one place redis-py errors are translated."""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from functools import cache
from typing import Any, TypeAlias

import redis
import redis.exceptions
from redis.cluster import RedisCluster

from . import errors

__all__ = ["SCRIPTS", "RedisClient", "Script", "fail_fast", "source", "translate_errors"]

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


def _is_outage(exc: BaseException) -> bool:
    """True for an error that means Redis (or part of a cluster) could not be reached."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        # min-replicas-to-write: a master that lost its replicas refuses writes
        return str(exc).startswith("NOREPLICAS")
    if isinstance(exc, redis.exceptions.RedisClusterException):
        # The cluster client's own errors are mostly bugs (keys of two slots, say), except
        # "Redis Cluster cannot be connected" and "All slots are not covered", raised while
        # reading the topology with nodes down: those come from connection errors, or say so.
        cause = exc.__cause__ or exc.__context__
        return isinstance(cause, _UNAVAILABLE) or "not covered" in str(exc)
    return False


#: Within :func:`fail_fast`: the outage the current request met, once it met one.
_outage: ContextVar[list[BaseException] | None] = ContextVar("tevo_hold_outage", default=None)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Within this block, once a Redis call found Redis unreachable, later ones fail at once.

    One failed call already took the time a call may take (its attempts' timeouts); the calls a
    request makes after a failure are best-effort clean-ups that the lease and the worker stand
    in for, so a request answers ``503`` within one call's time even when Redis dies half-way
    through. (An error Redis answered at once, such as OOM, does not count: it cost no time.)
    """
    token = _outage.set([])
    try:
        yield
    finally:
        _outage.reset(token)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's "could not reach Redis" errors into :class:`errors.Unavailable`."""
    outage = _outage.get()
    if outage:
        raise errors.Unavailable(
            f"Redis is unavailable: {type(outage[0]).__name__} earlier in this request"
        )
    try:
        yield
    except Exception as exc:
        if not _is_outage(exc):
            raise
        if outage is not None and not isinstance(exc, _ANSWERED):
            outage.append(exc)
        raise errors.Unavailable(f"Redis is unavailable: {_name(exc)}") from exc


def _name(exc: BaseException) -> str:
    """The kind of an outage, for the problem's detail: its class, or Redis's error code."""
    if type(exc) is redis.exceptions.ResponseError:
        return str(exc).split(" ", 1)[0]  # NOREPLICAS
    return type(exc).__name__


#: Each script: the files of ``tevo_hold/lua/`` it is assembled from, libraries first.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "ledger": ("_prelude.lua", "_ledger.lua", "ledger.lua"),
    "inventory": ("_prelude.lua", "_inventory.lua", "inventory.lua"),
    "fused": ("_prelude.lua", "_ledger.lua", "_inventory.lua", "fused.lua"),
    "apikeys": ("_prelude.lua", "apikeys.lua"),
}


@cache
def source(name: str) -> str:
    """The text of script ``name``: its files of ``tevo_hold/lua/`` joined in order."""
    lua = importlib.resources.files("tevo_hold").joinpath("lua")
    return "\n".join(lua.joinpath(part).read_text("utf-8") for part in SCRIPTS[name])


class Script:
    """One script of :data:`SCRIPTS`, registered once per client (EVALSHA; loads on NOSCRIPT)."""

    def __init__(self, client: RedisClient, name: str) -> None:
        self._script = client.register_script(source(name))

    def __call__(self, keys: Sequence[str], args: Sequence[str | int | float]) -> list[Any]:
        with translate_errors():
            reply = self._script(keys=list(keys), args=list(args))
        return [_text(item) for item in reply]


def _text(item: Any) -> Any:
    return item.decode("utf-8") if isinstance(item, bytes) else item
