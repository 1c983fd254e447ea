"""Lua script loading, reply decoding, and the one place redis-py errors are translated."""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

import redis
import redis.exceptions

from . import errors

__all__ = ["SCRIPTS", "Script", "source", "translate_errors"]

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
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's "could not reach Redis" errors into :class:`errors.Unavailable`."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise errors.Unavailable(f"Redis is unavailable: {type(exc).__name__}") from exc


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

    def __init__(self, client: redis.Redis, name: str) -> None:
        self._script = client.register_script(source(name))

    def __call__(self, keys: Sequence[str], args: Sequence[str | int | float]) -> list[Any]:
        with translate_errors():
            reply = self._script(keys=list(keys), args=list(args))
        return [_text(item) for item in reply]


def _text(item: Any) -> Any:
    return item.decode("utf-8") if isinstance(item, bytes) else item
