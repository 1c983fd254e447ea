"""Redis clients from a URL, with timeouts and retries sized for TEvo's 5-second budget."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .errors import ConfigurationError
from .settings import EMBEDDED_URL, Settings

__all__ = ["connect"]

#: Extra attempts after a connection error or timeout (redis-py's own default is 10).
RETRIES = 2


def connect(settings: Settings) -> redis.Redis:
    """A client for ``settings.redis_url``.

    ``memory://`` gives an in-process fakeredis that runs the same Lua scripts (the embedded
    default: nothing is shared with other processes, nothing survives a restart). Other URLs
    give a redis-py client whose every attempt is bounded by ``redis_timeout`` seconds, with
    ``RETRIES`` retries on connection errors, so a stalled Redis answers within the budget.
    """
    if settings.redis_url == EMBEDDED_URL:
        return _embedded()
    timeout = settings.redis_timeout
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), RETRIES),
        "health_check_interval": 30,
    }
    return redis.Redis.from_url(settings.redis_url, **options)


def _embedded() -> redis.Redis:
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
    return client
