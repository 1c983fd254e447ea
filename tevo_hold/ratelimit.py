"""Rate limits per API key, shared by every process through the deployment's Redis.

flask-limiter does the counting, with the moving-window strategy of its ``limits`` library, in
the ledger's Redis (a pool of its own with short timeouts; the embedded store included),
so the limit is one budget per key whatever the number of workers and hosts. Its keys start with
``{TEVO_HOLD_KEY_PREFIX}:limits``.

The limiter must never take the API down: should its storage fail, flask-limiter logs it and
falls back to counting in each process's memory (the same limits, per process) until the storage
answers again.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis
from flask_limiter import Limiter
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from . import observability
from ._redis import RedisClient
from .settings import Settings

__all__ = ["SCOPE", "build_limiter", "retry_after"]

#: Every API call of one key shares one budget (the limit's scope).
SCOPE = "tevo_hold"


def _key_name() -> str:
    """The limit's key: the authenticated API key's name (never the key)."""
    return observability.current().key_name or ""


def build_limiter(settings: Settings, client: RedisClient) -> Limiter | None:
    """A limiter counting in ``client``'s Redis, or None when ``TEVO_HOLD_RATE_LIMIT=off``."""
    if settings.rate_limit is None:
        return None
    options: dict[str, Any] = {"key_prefix": f"{settings.key_prefix}:limits"}
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        uri = "redis://"  # only the scheme matters: the connections come from the pool
        options["connection_pool"] = _quick_pool(pool, settings)
    elif isinstance(client, RedisCluster):  # no one pool: the cluster's nodes, as limits wants
        uri = _cluster_uri(client, settings)
        options.update(socket_timeout=_quick(settings), socket_connect_timeout=_quick(settings))
    else:
        uri = settings.redis_url.replace("unix://", "redis+unix://", 1)
    return Limiter(
        key_func=_key_name,
        storage_uri=uri,
        storage_options=options,
        strategy="moving-window",
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )


def _quick(settings: Settings) -> float:
    """Seconds the limiter may wait on Redis: a slice of one call's, so that with Redis stalled
    a request still answers 503 within its budget (the limiter then counts in memory)."""
    return min(0.1, settings.redis_timeout / 2)


def _quick_pool(pool: Any, settings: Settings) -> Any:
    """A pool like ``pool`` with the limiter's short timeouts and no retries (a plain pool's;
    others, such as Sentinel's or fakeredis', are shared as they are)."""
    if type(pool) is not redis.ConnectionPool:
        return pool
    quick = _quick(settings)
    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": quick,
        "socket_connect_timeout": quick,
        "retry": Retry(NoBackoff(), 0),
    }
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def _cluster_uri(client: RedisCluster, settings: Settings) -> str:
    """``redis+cluster://`` naming the nodes ``client`` knows (the settings' URL if it knows none
    yet: a cluster unreachable at start-up)."""
    try:
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]
    except Exception:  # the limiter falls back to memory until the cluster answers
        return settings.redis_url
    scheme = "rediss+cluster" if settings.redis_url.startswith("rediss") else "redis+cluster"
    return f"{scheme}://" + ",".join(f"{n.host}:{n.port}" for n in nodes)


def retry_after(limiter: Limiter | None) -> tuple[int, str | None]:
    """Seconds until the limit this request broke lets a request through again (at least 1),
    and that limit as text (``"600 per 1 minute"``)."""
    current = limiter.current_limit if limiter is not None else None
    if current is None:
        return 1, None
    try:
        seconds = math.ceil(current.window.reset_time - time.time())
    except Exception:  # the storage failed between the check and now: a guess will do
        seconds = 1
    return max(1, seconds), str(current.limit)
