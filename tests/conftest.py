"""Fixtures: every behaviour test runs on fakeredis (fast), on a real redis-server, and on a
real three-master Redis Cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tevo_hold import HoldService, RedisInventoryAdapter, Settings, build_service, create_app
from tevo_hold.connection import RedisClient, connect

from .servers import Cluster, redis_cluster, redis_server

API_KEY = "test-key"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a private redis-server, started once per test session."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A private Redis Cluster of three masters, started once per test session."""
    with redis_cluster(masters=3) as nodes:
        yield nodes


@pytest.fixture(scope="session")
def cluster_client(cluster: Cluster) -> Iterator[RedisClient]:
    """A ``redis+cluster://`` client made as the server makes it, kept for the session (a new
    one reads the cluster's topology and command table first: a tenth of a second).

    Its Redis timeout is generous: the default (0.25 s an attempt, two attempts) is a server's
    budget for answering 503 in time, and a busy test machine stalls a node longer than that
    now and then (a test then failed with Unavailable: TimeoutError). The tests of timeouts
    make clients of their own."""
    client = connect(Settings(redis_url=cluster.url, api_keys=(API_KEY,), redis_timeout=10))
    yield client
    client.close()


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[RedisClient]:
    """A Redis client: fakeredis with Lua, a real redis-server, a real Redis Cluster (a
    ``redis+cluster://`` client as the server makes it); the real ones flushed for each test."""
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return
    if request.param == "cluster":
        request.getfixturevalue("cluster").flush()
        yield request.getfixturevalue("cluster_client")
        return
    real = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    real.flushdb()
    yield real
    real.close()


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url="redis://unused", api_keys=(API_KEY,), hold_ttl=900, lease=10)


@pytest.fixture(params=["fused", "stepwise"])
def make_service(request: pytest.FixtureRequest, client: RedisClient) -> Callable[..., HoldService]:
    """Build a service on ``client`` with settings overridden by keyword.

    Parametrized: the reference adapter's one-script path ("fused") and the step-by-step path
    that every other adapter takes. On a Redis Cluster only the step-by-step path runs (a
    hold's keys and its listing's lie in different slots), so "fused" on "cluster" checks
    that the service falls back to it by itself.
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
