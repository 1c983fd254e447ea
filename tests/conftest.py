"""Fixtures: every behaviour test runs on fakeredis (fast) and on a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture
def service(client: redis.Redis, settings: Settings) -> HoldService:
    return build_service(settings, client=client)


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
