"""Which POS adapter the server uses, recorded in Redis, so that the worker and the CLI use it too.

A vendor who plugs an adapter in code (``TevoHold(app, service=HoldService(ledger, MyPos()))``)
and starts ``tevo-hold worker`` with the environment alone would give the worker the default
``reference`` adapter: it would "release" lapsed holds and "invoice" failed invoices in the Redis
inventory, record success, and never call the vendor's POS. So the extension records its
adapter's class (``module:Class``) under :meth:`~tevo_hold.keys.KeySpace.server_adapter` when it
starts (one write), and the commands that call the POS read it when they start (one read) and
refuse to run with another adapter.

With it the extension records which POS that adapter calls, its ``target()`` (the ``http``
adapter's base URL, say): a worker given the right class but another POS's address, a staging
POS against production's Redis, would release holds and retry invoices in the wrong system and
record them done. A record without a target (a server of an earlier version) is compared by
class alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import redis

from .. import errors
from .._redis import translate_errors
from ..settings import PREFIX
from .base import PosAdapter

if TYPE_CHECKING:
    from ..service import HoldService

__all__ = ["adapter_name", "check_adapter", "record_adapter"]

log = logging.getLogger("tevo_hold")

#: The TEVO_HOLD_ADAPTER values of the adapters tevo-hold ships, by class.
_SETTINGS = {
    "tevo_hold.adapters.redis_inventory:RedisInventoryAdapter": "reference",
    "tevo_hold.adapters.http:HttpPosAdapter": "http",
}


def adapter_name(adapter: PosAdapter) -> str:
    """The adapter's class as ``module:Class``: what TEVO_HOLD_ADAPTER names it by."""
    cls = type(adapter)
    return f"{cls.__module__}:{cls.__qualname__}"


def _setting(name: str) -> str:
    return f"{PREFIX}ADAPTER={_SETTINGS.get(name, name)}"


def _target(adapter: PosAdapter) -> str:
    """The adapter's ``target()`` ("" for None); ConfigurationError with its error if it raises
    (the vendor's code: one line, not a traceback or a server that fails to boot)."""
    try:
        return adapter.target() or ""
    except Exception as exc:
        name = adapter_name(adapter)
        raise errors.ConfigurationError(
            f"The POS adapter {name} ({_setting(name)}): its target() failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def record_adapter(service: HoldService) -> None:
    """Record the service's adapter as the server's (at start-up: one write).

    Redis down does not stop the start (the server serves once Redis is back); it is logged,
    since the commands then check against what an earlier start recorded, if anything. A
    TEVO_HOLD_REDIS_URL of the wrong kind for the Redis it reaches does (ConfigurationError), as
    does an adapter whose ``target()`` fails.
    """
    ledger, keys = service.ledger, service.ledger.keys
    record = {
        keys.server_adapter(): adapter_name(service.adapter),
        keys.server_adapter_target(): _target(service.adapter),
    }
    try:
        with translate_errors():
            ledger.client.mset(record)  # both keys in one slot: one atomic write
    except errors.ConfigurationError:
        raise
    except (
        errors.TevoHoldError,
        redis.RedisError,
        redis.exceptions.RedisClusterException,  # not a RedisError
    ) as exc:
        log.warning(
            "could not record the POS adapter in Redis (%s): the tevo-hold commands that call "
            "the POS (worker, invoices retry, inventory) cannot check that they use the same "
            "one until the next start",
            type(exc).__name__,
        )


def check_adapter(service: HoldService) -> None:
    """Raise ConfigurationError if the server recorded an adapter other than the service's.

    For the commands that call the POS (one read). Nothing recorded (no server started on this
    Redis and key prefix yet): nothing to compare, no error.
    """
    ledger, keys = service.ledger, service.ledger.keys
    with translate_errors():
        raw, raw_target = ledger.client.mget(keys.server_adapter(), keys.server_adapter_target())
    if raw is None:
        return
    server = _text(raw)
    ours = adapter_name(service.adapter)
    server_module, _, server_class = server.partition(":")
    if server == ours or (server_module == "__main__" and ours.endswith(":" + server_class)):
        if raw_target is not None:  # None: recorded by a server that did not record targets
            target = _target(service.adapter)
            _check_target(_text(raw_target), target, ours, keys.server_adapter_target())
        return
    if server_module == "__main__":
        fix = (
            f"the server's adapter, {server_class}, is defined in the script it runs as "
            f"__main__: move the class to a module and set {PREFIX}ADAPTER=module:{server_class}"
        )
    else:
        fix = f"set {_setting(server)}"
    raise errors.ConfigurationError(
        f"The server uses the POS adapter {server}, but this command would use {ours} "
        f"({_setting(ours)}): it would move tickets in another system than the server's "
        f"POS. Give the command the server's settings: {fix} (a class that needs "
        "arguments builds itself in a classmethod from_settings(settings); its module must be "
        "importable here: installed, or on PYTHONPATH), and the same TEVO_HOLD_REDIS_URL, "
        "TEVO_HOLD_KEY_PREFIX and POS settings. (The server records its adapter in Redis when "
        "it starts, under the key "
        f"{ledger.keys.server_adapter()!r}.)"
    )


def _text(raw: object) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _check_target(server: str, ours: str, adapter: str, key: str) -> None:
    """Raise ConfigurationError unless the command's adapter calls the server's POS."""
    if server == ours:
        return
    if adapter == "tevo_hold.adapters.http:HttpPosAdapter":
        fix = f"set {PREFIX}POS_URL to the server's ({server}, with its credentials if any)"
    else:
        fix = "configure the adapter as the server's, so that its target() answers the same"
    raise errors.ConfigurationError(
        f"The server's POS adapter, {adapter}, calls {server or 'no particular POS'}, but this "
        f"command's would call {ours or 'no particular POS'}: it would move tickets in another "
        f"system than the server's POS. Give the command the server's settings: {fix}. (The "
        "server records its adapter's target in Redis when it starts, under the key "
        f"{key!r}.)"
    )
