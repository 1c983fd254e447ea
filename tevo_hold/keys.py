"""Redis key layout.

Every key a Lua script touches is named here and passed in through ``KEYS``, and the keys of one
script call always share a hash slot, so the same scripts run on a Redis Cluster unchanged. The
exception is ``fused.lua``, which runs only on one Redis (never a cluster): it changes a hold and
its listing (two slots) at once, and its release and invoice, sent with the ``global_id`` alone,
read the listing's stock key from the hold's record (field ``lk``) and name the others after it.

- A hold's record, its audit trail, and the due set (the worker's outbox) of its shard share the
  hash tag ``{h<n>}``, where ``n`` is one of :data:`SHARDS` shards picked by a CRC32 of the
  ``global_id``: holds spread over the cluster's masters, and each record can be written in the
  same atomic step as the work it schedules.
- A listing's keys (the reference inventory) share the tag ``{l:<remote_id>}``: listings spread
  over the masters too.
- The managed API keys (:mod:`tevo_hold.auth`) share the tag ``{keys}``: a names hash and one
  record per key, named by the key's SHA-256 digest (never by the key).
- An API key's rate-limit state (:mod:`tevo_hold.ratelimit`) has the tag ``{q:<key name>}``.
- What the server records about itself for the commands (its POS adapter's class, see
  :mod:`tevo_hold.adapters.identity`) has the tag ``{server}``.

Ids are data, never structure: ``%``, ``{`` and ``}`` are percent-encoded before an id goes into
a key. The encoding is injective and leaves no brace, so two ids never share a key and an id can
neither end a hash tag early nor open one; an id is always the last part of its key, after a
prefix that says what the key is, so no id's key can be another key's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["SHARDS", "KeySpace", "decode_id", "encode_id", "shard_of"]

#: How many shards holds are spread over. Part of the key layout: never change it on a live store.
SHARDS = 256

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def encode_id(value: str) -> str:
    """Encode an id for use inside a key: injective, and free of ``{`` and ``}``."""
    if "%" not in value and "{" not in value and "}" not in value:
        return value  # the usual id, as is: three scans in C, where translate maps each character
    return value.translate(_ESCAPES)


def decode_id(encoded: str) -> str:
    """The id :func:`encode_id` encoded."""
    return encoded.replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


def shard_of(global_id: str) -> int:
    """The shard of a hold: stable across processes, hosts and Python versions."""
    return zlib.crc32(global_id.encode("utf-8")) % SHARDS


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Names the keys of one deployment; ``prefix`` separates deployments sharing a Redis."""

    prefix: str = "tevo_hold"

    def hold(self, global_id: str) -> tuple[str, str, str]:
        """A hold's keys: its record hash, its audit trail (a list), its shard's due set.

        (``:a:``: the trail was a stream, under ``:e:``, before it was a list; a name of its own,
        so that no script meets an old stream where it expects a list.)
        """
        base = f"{self.prefix}:{{h{shard_of(global_id)}}}"
        gid = encode_id(global_id)
        return f"{base}:g:{gid}", f"{base}:a:{gid}", f"{base}:due"

    def due(self, shard: int) -> str:
        """The due set (the worker's outbox) of one shard."""
        return f"{self.prefix}:{{h{shard}}}:due"

    def listing(self, remote_id: str) -> tuple[str, str, str]:
        """The reference inventory's keys of one listing: stock hash, holds hash, deadlines zset."""
        base = f"{self.prefix}:{{l:{encode_id(remote_id)}}}"
        return base, f"{base}:holds", f"{base}:due"

    def sale(self, remote_id: str, global_id: str) -> str:
        """The marker of one sale in the reference inventory (makes a sale idempotent)."""
        return f"{self.prefix}:{{l:{encode_id(remote_id)}}}:sold:{encode_id(global_id)}"

    def api_key_names(self) -> str:
        """The managed API keys' names hash: name -> the key's digest."""
        return f"{self.prefix}:{{keys}}:names"

    def api_key(self, digest: str) -> str:
        """The record of the managed API key whose SHA-256 digest (hex) is ``digest``."""
        return f"{self.prefix}:{{keys}}:h:{digest}"

    def quota(self, name: str, amount: int, period_ms: int) -> str:
        """The rate-limit state of the API key named ``name`` under one limit (a GCRA's
        theoretical arrival time); a changed limit starts afresh."""
        return f"{self.prefix}:{{q:{encode_id(name)}}}:{amount}/{period_ms}"

    def server_adapter(self) -> str:
        """The class (``module:Class``) of the POS adapter the server last started with."""
        return f"{self.prefix}:{{server}}:adapter"

    def server_adapter_target(self) -> str:
        """Which POS that adapter calls (its ``target()``; ``""`` for none): in the slot of
        :meth:`server_adapter`, so that both are written by one MSET and read by one MGET."""
        return f"{self.prefix}:{{server}}:adapter:target"

    def hold_pattern(self) -> str:
        """A SCAN pattern matching every hold record."""
        return f"{self.prefix}:{{h*}}:g:*"

    def global_id_of(self, key: str) -> str | None:
        """The ``global_id`` whose record :meth:`hold` names ``key``; None for any other key.

        The known head (prefix, shard tag, ``:g:``) is taken off the front: an id may contain
        ``:g:`` too.
        """
        head = f"{self.prefix}:{{h"
        if not key.startswith(head):
            return None
        shard, sep, encoded = key[len(head) :].partition("}:g:")
        if not sep or not shard.isdigit():
            return None
        return decode_id(encoded)
