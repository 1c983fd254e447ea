"""Everything a Redis holds, as bytes: to show that a secret is stored nowhere in it."""

from __future__ import annotations

import redis


def everything_in(client: redis.Redis) -> bytes:
    """Every key's name and every value, field, member and stream entry, joined."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                parts += [field, value]
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"zset":
            parts += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"stream":
            for entry_id, fields in client.xrange(key):
                parts.append(entry_id)
                for field, value in fields.items():
                    parts += [field, value]
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} of {key!r}")
    return b"\n".join(parts)
