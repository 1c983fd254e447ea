"""Redis key layout.

Every key a Lua script touches is named here and passed in through ``KEYS``. Keys of one hold share
the hash tag ``{g:<global_id>}``; keys of one listing share ``{l:<remote_id>}``. On a Redis Cluster
each script therefore touches one slot, and the state spreads over the masters by hold and by
listing.

Ids are data, never structure: before an id goes into a key, ``%``, ``{`` and ``}`` are
percent-encoded. The encoding is injective, so two ids never share a key, and an encoded id holds
no brace, so it can neither end the hash tag early nor open another one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeySpace", "encode_id"]

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def encode_id(value: str) -> str:
    """Encode an id for use inside a key: injective, and free of ``{`` and ``}``."""
    return value.translate(_ESCAPES)


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Names the keys of one deployment; ``prefix`` separates deployments sharing a Redis."""

    prefix: str = "tevo_hold"

    def hold(self, global_id: str) -> str:
        """The hash holding one hold's record."""
        return f"{self.prefix}:{{g:{encode_id(global_id)}}}"

    def listing(self, remote_id: str) -> tuple[str, str, str]:
        """The reference inventory's keys of one listing: stock hash, holds hash, deadlines zset."""
        base = f"{self.prefix}:{{l:{encode_id(remote_id)}}}"
        return base, f"{base}:holds", f"{base}:due"

    def sale(self, remote_id: str, global_id: str) -> str:
        """The marker of one sale in the reference inventory (makes a sale idempotent)."""
        return f"{self.prefix}:{{l:{encode_id(remote_id)}}}:sold:{encode_id(global_id)}"
