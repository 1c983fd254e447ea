"""The ``tevo-hold`` command, on a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from tevo_hold import RedisInventoryAdapter, Settings, build_service, errors
from tevo_hold.cli import main


@pytest.fixture
def env(redis_url: str) -> dict[str, str | None]:
    """The environment of the command: the test Redis (flushed first) and a key."""
    flusher = redis.Redis.from_url(redis_url)
    try:
        flusher.flushdb()
    finally:
        flusher.close()
    return {"TEVO_HOLD_REDIS_URL": redis_url, "TEVO_HOLD_API_KEYS": "k"}


def run(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


@pytest.fixture
def library(redis_url: str, env: dict[str, str | None]) -> Iterator[RedisInventoryAdapter]:
    """The reference adapter on the same Redis the command uses, through the library."""
    service = build_service(Settings(redis_url=redis_url, api_keys=("k",)))
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    try:
        yield adapter
    finally:
        service.close()


def test_inventory_set_stocks_a_listing_and_prints_it(env, library):
    result = run(env, "inventory", "set", "R", "5")
    assert result.exit_code == 0, result.output
    assert "remote_id=R" in result.stdout
    assert "on_hand=5" in result.stdout
    assert "available=5" in result.stdout
    assert library.stock("R").on_hand == 5


def test_inventory_set_json(env):
    result = run(env, "inventory", "set", "R", "5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["on_hand"] == 5


def test_inventory_set_refuses_a_negative_quantity(env, library):
    result = run(env, "inventory", "set", "--", "R", "-1")
    assert result.exit_code != 0
    with pytest.raises(errors.ListingNotFound):
        library.stock("R")


def test_inventory_show_prints_the_stock(env):
    run(env, "inventory", "set", "R", "5")
    result = run(env, "inventory", "show", "R")
    assert result.exit_code == 0, result.output
    for part in ("remote_id=R", "on_hand=5", "held=0", "available=5", "sold=0"):
        assert part in result.stdout


def test_inventory_show_json_counts_holds(env, redis_url):
    run(env, "inventory", "set", "R", "5")
    service = build_service(Settings(redis_url=redis_url, api_keys=("k",)))
    try:
        service.hold(remote_id="R", quantity=2, global_id="g1")
    finally:
        service.close()
    result = run(env, "inventory", "show", "R", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "remote_id": "R",
        "on_hand": 5,
        "held": 2,
        "available": 3,
        "sold": 0,
    }


def test_inventory_show_of_unknown_listing_exits_1_with_an_error_line(env):
    result = run(env, "inventory", "show", "nope")
    assert result.exit_code == 1
    assert "listing_not_found" in result.stderr
    assert "error" in result.stderr
    assert result.stdout == ""


def test_inventory_load_stocks_every_listing_of_the_file(env, library, tmp_path: Path):
    path = tmp_path / "inventory.json"
    listings = [{"remote_id": "A", "quantity": 3}, {"remote_id": "B", "quantity": 0}]
    path.write_text(json.dumps({"listings": listings}), "utf-8")
    result = run(env, "inventory", "load", str(path))
    assert result.exit_code == 0, result.output
    assert "2" in result.stdout
    assert library.stock("A").on_hand == 3
    assert library.stock("B").on_hand == 0


def test_inventory_load_of_a_bad_file_exits_1_naming_it(env, tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{"items": []}', "utf-8")
    result = run(env, "inventory", "load", str(path))
    assert result.exit_code == 1
    assert "bad.json" in result.stderr


def test_holds_show_prints_a_hold_made_through_the_library(env, redis_url, library):
    library.set_quantity("R", 5)
    service = build_service(Settings(redis_url=redis_url, api_keys=("k",)))
    try:
        service.hold(remote_id="R", quantity=2, global_id="g1")
    finally:
        service.close()
    result = run(env, "holds", "show", "g1")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["global_id"] == "g1"
    assert shown["remote_id"] == "R"
    assert shown["quantity"] == 2
    assert shown["status"] == "held"


def test_holds_show_of_unknown_hold_exits_1(env):
    result = run(env, "holds", "show", "nope")
    assert result.exit_code == 1
    assert "hold_not_found" in result.stderr


def test_without_redis_url_the_command_fails_naming_the_setting():
    env = {"TEVO_HOLD_REDIS_URL": None, "TEVO_HOLD_API_KEYS": "k"}
    result = run(env, "inventory", "show", "R")
    assert result.exit_code != 0
    assert "TEVO_HOLD_REDIS_URL" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["invoices", "failed"],
        ["invoices", "retry", "g1"],
        ["holds", "list"],
        ["holds", "show", "g1"],
        ["keys", "list"],
        ["inventory", "show", "R"],
    ],
    ids=" ".join,
)
def test_a_bad_setting_is_one_error_line_naming_it_for_every_command(env, command):
    result = run({**env, "TEVO_HOLD_HOLD_TTL": "abc"}, *command)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not a ConfigurationError's traceback
    [line] = result.stderr.splitlines()
    assert line.startswith("error: configuration_error: TEVO_HOLD_HOLD_TTL='abc'")
    assert result.stdout == ""


def test_an_adapter_that_cannot_be_built_is_one_error_line(env):
    result = run({**env, "TEVO_HOLD_ADAPTER": "no_such_module_xyz:Adapter"}, "worker")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: configuration_error: TEVO_HOLD_ADAPTER=")
