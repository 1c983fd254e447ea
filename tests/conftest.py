"""Fixtures: every behaviour test runs on fakeredis (fast) and on a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tevo_hold import HoldService, RedisInventoryAdapter, Settings, build_service, create_app

from .servers import redis_server

API_KEY = "test-key"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a private redis-server, started once per test session."""
    with redis_server() as url:
        yield url


@pytest.fixture(params=["fakeredis", "redis"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A Redis client: fakeredis with Lua, then a real redis-server (flushed for each test)."""
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return
    real = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    real.flushdb()
    yield real
    real.close()


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url="redis://unused", api_keys=(API_KEY,), hold_ttl=900, lease=10)


@pytest.fixture(params=["fused", "stepwise"])
def make_service(request: pytest.FixtureRequest, client: redis.Redis) -> Callable[..., HoldService]:
    """Build a service on ``client`` with settings overridden by keyword.

    Parametrized: the reference adapter's one-script path ("fused") and the step-by-step path
    that every other adapter (and a Redis Cluster) takes.
    """
    fuse = request.param == "fused"

    def make(**overrides: Any) -> HoldService:
        settings = Settings(redis_url="redis://unused", api_keys=(API_KEY,), **overrides)
        return build_service(settings, client=client, fuse=fuse)

    return make


@pytest.fixture
def service(make_service: Callable[..., HoldService]) -> HoldService:
    return make_service()


@pytest.fixture
def inventory(service: HoldService) -> RedisInventoryAdapter:
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    return adapter


@pytest.fixture
def app(service: HoldService, settings: Settings) -> Flask:
    return create_app({"TEVO_HOLD_API_KEYS": API_KEY, "TESTING": True}, service=service)


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    return app.test_client()
