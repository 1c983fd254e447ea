"""The ``tevo-hold`` command, on a real redis-server."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import redis
from click.testing import CliRunner, Result
from flask import Flask

from tevo_hold import (
    HoldService,
    KeySpace,
    Ledger,
    RedisInventoryAdapter,
    Settings,
    TevoHold,
    build_service,
    errors,
)
from tevo_hold.adapters.http import HttpPosAdapter
from tevo_hold.adapters.identity import check_adapter
from tevo_hold.cli import main
from tevo_hold.connection import connect
from tevo_hold.validation import MAX_STOCK

from .recording_pos import RecordingPos


@pytest.fixture
def env(redis_url: str) -> dict[str, str | None]:
    """The environment of the command: the test Redis (flushed first) and a key."""
    flusher = redis.Redis.from_url(redis_url)
    try:
        flusher.flushdb()
    finally:
        flusher.close()
    # Redis's answers waited for as long as a busy test machine takes (the default, 0.25 s an
    # attempt, is a production budget; these tests are not about Redis timing out)
    return {
        "TEVO_HOLD_REDIS_URL": redis_url,
        "TEVO_HOLD_API_KEYS": "k",
        "TEVO_HOLD_REDIS_TIMEOUT": "10",
    }


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


def test_inventory_set_refuses_a_listing_id_the_api_refuses(env, library):
    """An empty id made a listing that no hold could ever name (the API refuses it)."""
    result = run(env, "inventory", "set", "", "5")
    assert result.exit_code == 1, result.output
    assert "remote_id: must not be empty" in result.output
    with pytest.raises(errors.ListingNotFound):
        library.stock("")


def test_inventory_set_refuses_more_tickets_than_the_scripts_hold_exactly(env, library):
    """2^63 - 1 tickets was taken, and read back as on_hand=-9223372036854775808."""
    too_many = str(MAX_STOCK + 1)
    refused = run(env, "inventory", "set", "R", too_many)
    assert refused.exit_code == 2
    assert f"Invalid value for 'QUANTITY': {too_many} is not in the range 0<=x<={MAX_STOCK}" in (
        refused.stderr
    )
    with pytest.raises(errors.ListingNotFound):
        library.stock("R")
    taken = run(env, "inventory", "set", "R", str(MAX_STOCK))
    assert taken.exit_code == 0, taken.output
    assert library.stock("R").on_hand == MAX_STOCK


def test_inventory_load_refuses_more_tickets_than_the_scripts_hold_exactly(env, tmp_path: Path):
    path = tmp_path / "inventory.json"
    listings = [{"remote_id": "A", "quantity": 2**63 - 1}]
    path.write_text(json.dumps({"listings": listings}), "utf-8")
    result = run(env, "inventory", "load", str(path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: configuration_error: inventory file {str(path)!r}: listing 1 ('A'): its "
        f"quantity must be a whole number from 0 to {MAX_STOCK}, not {2**63 - 1}\n"
    )


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
    listings = [{"remote_id": "A", "quantity": 3}, {"remote_id": 7, "quantity": 0}]
    path.write_text(json.dumps({"listings": listings}), "utf-8")
    result = run(env, "inventory", "load", str(path))
    assert result.exit_code == 0, result.output
    assert "2" in result.stdout
    assert library.stock("A").on_hand == 3
    assert library.stock("7").on_hand == 0  # a whole number reads as its digits


@pytest.mark.parametrize(
    ("listing", "says"),
    [
        ({"remote_id": "B", "quantity": -1}, "listing 2 ('B'): its quantity must be a whole"),
        ({"remote_id": "B", "quantity": 10.7}, f"from 0 to {MAX_STOCK}, not 10.7"),
        ({"remote_id": "B", "quantity": True}, f"from 0 to {MAX_STOCK}, not true"),
        ({"remote_id": "B", "quantity": "10"}, f'from 0 to {MAX_STOCK}, not "10"'),
        ({"remote_id": "", "quantity": 1}, "listing 2: remote_id: must not be empty"),
        # stocked as listings 'None', 'True', "{'id': 'x'}": ids no hold names
        ({"remote_id": None, "quantity": 1}, "listing 2: remote_id: must be a string"),
        ({"remote_id": True, "quantity": 1}, "listing 2: remote_id: must be a string"),
        ({"remote_id": {"id": "x"}, "quantity": 1}, "listing 2: remote_id: must be a string"),
    ],
    ids=["negative", "fraction", "bool", "string", "empty-id", "null-id", "bool-id", "object-id"],
)
def test_inventory_load_of_a_file_it_refuses_changes_nothing(
    env, library, tmp_path: Path, listing, says
):
    """It stocked the listings before the bad one, then refused (a half-loaded inventory);
    and it stocked 10.7 tickets as 10 (int()), true as 1 and "10" as 10."""
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"listings": [{"remote_id": "A", "quantity": 5}, listing]}))
    result = run(env, "inventory", "load", str(path))
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: configuration_error: inventory file {str(path)!r}: "), line
    assert says in line
    with pytest.raises(errors.ListingNotFound):
        library.stock("A")


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


EVERY_COMMAND = [
    ["worker"],
    ["backlog"],
    ["invoices", "failed"],
    ["invoices", "retry", "g1"],
    ["holds", "list"],
    ["holds", "show", "g1"],
    ["keys", "list"],
    ["keys", "create", "ops"],
    ["inventory", "show", "R"],
    ["check", "http://127.0.0.1:9", "--api-key", "k", "--prepare"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_a_bad_setting_is_one_error_line_naming_it_for_every_command(env, command):
    result = run({**env, "TEVO_HOLD_HOLD_TTL": "abc"}, *command)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not a ConfigurationError's traceback
    [line] = result.stderr.splitlines()
    assert line.startswith("error: configuration_error: TEVO_HOLD_HOLD_TTL='abc'")
    assert result.stdout == ""


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cret@127.0.0.1:notaport/0", "its port must be a number from 1 to 65535"),
        ("redis://:s3cret@127.0.0.1:99999/0", "its port must be a number from 1 to 65535"),
        ("redis://:s3cret@127.0.0.1:6434/0?socket_timeout=abc", "socket_timeout must be"),
        ("redis://:s3cret@127.0.0.1:6434/notadb", "its path is not a database number"),
    ],
    ids=["port", "port-range", "query", "db"],
)
def test_a_mistyped_redis_url_is_one_error_line_naming_it_for_every_command(
    env, command, url, says
):
    """It was redis-py's ValueError, a traceback, at the first Redis call (and /notadb quietly
    meant database 0); now the settings refuse it, before anything runs."""
    result = run({**env, "TEVO_HOLD_REDIS_URL": url}, *command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: configuration_error: TEVO_HOLD_REDIS_URL: "), line
    assert says in line and "s3cret" not in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("scheme", "path", "says"),
    [
        ("redis+cluster", "", "configuration_error: TEVO_HOLD_REDIS_URL names a Redis Cluster"),
        ("redis+sentinel", "/mymaster", "unavailable: Redis is unavailable: a server"),
    ],
    ids=["cluster", "sentinel"],
)
def test_a_redis_url_of_the_wrong_kind_for_the_redis_it_reaches_is_one_error_line(
    env, redis_url, scheme, path, says
):
    """redis+cluster:// or redis+sentinel:// aimed at a plain Redis: redis-py's
    RedisClusterException or ResponseError ("unknown command 'SENTINEL'") was a traceback."""
    address = redis_url.split("://", 1)[1].split("/", 1)[0]
    result = run({**env, "TEVO_HOLD_REDIS_URL": f"{scheme}://{address}{path}"}, "keys", "list")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {says}"), line


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_a_database_the_redis_does_not_have_is_one_error_line_naming_the_setting(
    env, redis_url, command
):
    """Only Redis knows how many databases it has: its refusal of /99 was a ResponseError's
    traceback."""
    result = run({**env, "TEVO_HOLD_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/99"}, *command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: unavailable: Redis is unavailable: it has no database of "), line
    assert "TEVO_HOLD_REDIS_URL" in line and "(0 to 15 by default)" in line


def test_backlog_counts_the_work_due_and_fails_past_max_age(env, redis_url):
    empty = run(env, "backlog", "--max-age", "0")
    assert empty.exit_code == 0, empty.output
    assert empty.stdout == "0 items due, the oldest waiting 0.0 s\n"

    # a claim whose request died: its compensation is due at the lease's end
    service = build_service(Settings(redis_url=redis_url))
    try:
        service.ledger.claim_hold("bk-1", "R", 1, ttl=60, lease=0.01, token="t", actor="test")
    finally:
        service.close()
    time.sleep(0.3)
    waiting = run(env, "backlog", "--json")
    assert waiting.exit_code == 0, waiting.output
    found = json.loads(waiting.stdout)
    assert found["items"] == 1 and 0.25 <= found["oldest_seconds"] < 10
    late = run(env, "backlog", "--max-age", "0.1")
    assert late.exit_code == 1
    assert late.stdout.startswith("1 item due, the oldest waiting ")
    assert "over --max-age 0.1: is a tevo-hold worker running?" in late.stderr
    assert run(env, "backlog", "--max-age", "60").exit_code == 0


def test_backlog_without_redis_is_one_error_line(env):
    result = run({**env, "TEVO_HOLD_REDIS_URL": "redis://127.0.0.1:1/0"}, "backlog")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unavailable: ")


def test_an_adapter_that_cannot_be_built_is_one_error_line(env):
    result = run({**env, "TEVO_HOLD_ADAPTER": "no_such_module_xyz:Adapter"}, "worker")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: configuration_error: TEVO_HOLD_ADAPTER=")


class UnconfiguredPos(RecordingPos):
    """The vendor guide's from_settings, which reads its URL with os.environ[...], run without
    it; and a target() that fails."""

    @classmethod
    def from_settings(cls, settings: Settings) -> UnconfiguredPos:
        if os.environ.get("TEST_CLI_BUILD_FAILS"):
            os.environ["ACME_POS_URL"]  # read for its KeyError
        return cls()

    def target(self) -> str:
        raise RuntimeError("no ACME_POS_URL")


@pytest.mark.parametrize("where", ["from_settings", "target"])
def test_an_adapter_whose_own_code_fails_is_one_error_line(env, redis_url, where):
    """A 50-line traceback before: the adapter's error goes in the line, with the setting."""
    name = "tests.test_cli:UnconfiguredPos"
    if where == "target":  # a server of this adapter recorded its class and target
        keys, client = KeySpace(Settings().key_prefix), redis.Redis.from_url(redis_url)
        with client:
            client.mset({keys.server_adapter(): name, keys.server_adapter_target(): "x"})
    build_fails = "1" if where == "from_settings" else None
    command = {**env, "TEVO_HOLD_ADAPTER": name, "TEST_CLI_BUILD_FAILS": build_fails}
    result = run(command, "worker")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    if where == "from_settings":
        assert line == (
            f"error: configuration_error: TEVO_HOLD_ADAPTER={name!r}: "
            "UnconfiguredPos.from_settings(settings) failed: KeyError: 'ACME_POS_URL'"
        )
    else:
        assert line == (
            f"error: configuration_error: The POS adapter {name} (TEVO_HOLD_ADAPTER={name}): "
            "its target() failed: RuntimeError: no ACME_POS_URL"
        )


# -- the server's adapter and the commands that call the POS -----------------------------------


class VendorPos(RecordingPos):
    """A vendor's adapter, plugged in code. Its calls are kept on the class: the command builds
    an instance of its own (TEVO_HOLD_ADAPTER=tests.test_cli:VendorPos)."""

    calls: ClassVar[list[tuple[str, str]]] = []  # type: ignore[misc]
    refuse_invoices: ClassVar[bool] = False

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        super().invoice(
            global_id=global_id, remote_id=remote_id, quantity=quantity, tevo_order_id=tevo_order_id
        )
        if self.refuse_invoices:
            raise errors.PosError("The vendor's POS refused the invoice.")


VENDOR = "tests.test_cli:VendorPos"
REFERENCE = "tevo_hold.adapters.redis_inventory:RedisInventoryAdapter"


@pytest.fixture
def vendor_server(redis_url: str, env: dict[str, str | None]) -> Iterator[HoldService]:
    """The vendor guide's "Plug it in": a Flask app whose TevoHold serves VendorPos; with a
    hold, g1, whose invoice VendorPos refused (invoice_failed)."""
    VendorPos.calls.clear()
    VendorPos.refuse_invoices = True
    settings = Settings(redis_url=redis_url, api_keys=("k",))
    client = connect(settings)
    ledger = Ledger(client, keys=KeySpace(settings.key_prefix), retention=settings.retention)
    service = HoldService(ledger, VendorPos(), hold_ttl=settings.hold_ttl, lease=settings.lease)
    TevoHold(Flask("vendor"), service=service, settings=settings, url_prefix="/tevo")
    try:
        service.hold(remote_id="R", quantity=2, global_id="g1")
        with pytest.raises(errors.PosError):
            service.invoice(global_id="g1", tevo_order_id=4711)
        assert VendorPos.calls == [("hold", "g1"), ("invoice", "g1")]
        VendorPos.refuse_invoices = False
        yield service
    finally:
        client.close()


def _refused_naming_both(result: Result, theirs: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: configuration_error: The server uses the POS adapter ")
    assert VENDOR in line and theirs in line
    assert f"set TEVO_HOLD_ADAPTER={VENDOR}" in line
    assert "from_settings(settings)" in line and "PYTHONPATH" in line


@pytest.mark.parametrize("command", [["worker"], ["invoices", "retry", "g1"]], ids=" ".join)
def test_a_command_that_calls_the_pos_refuses_another_adapter_than_the_servers(
    env, vendor_server, command
):
    refused = run(env, *command)  # the environment alone: the reference adapter
    _refused_naming_both(refused, f"{REFERENCE} (TEVO_HOLD_ADAPTER=reference)")
    http = run(
        {**env, "TEVO_HOLD_ADAPTER": "http", "TEVO_HOLD_POS_URL": "http://127.0.0.1:9"}, *command
    )
    _refused_naming_both(http, "tevo_hold.adapters.http:HttpPosAdapter (TEVO_HOLD_ADAPTER=http)")
    # nothing was done: the hold is still invoice_failed, the vendor's POS saw nothing more
    assert vendor_server.get(global_id="g1").status == "invoice_failed"
    assert VendorPos.calls == [("hold", "g1"), ("invoice", "g1")]


def test_with_the_servers_adapter_the_command_calls_the_vendors_pos(env, vendor_server):
    retried = run({**env, "TEVO_HOLD_ADAPTER": VENDOR}, "invoices", "retry", "g1")
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() == "g1: invoiced"
    assert VendorPos.calls == [("hold", "g1"), ("invoice", "g1"), ("invoice", "g1")]
    assert vendor_server.get(global_id="g1").status == "invoiced"


def test_inventory_commands_refuse_when_the_server_uses_another_adapter(env, vendor_server):
    _refused_naming_both(run(env, "inventory", "set", "R", "5"), REFERENCE)
    with pytest.raises(errors.ListingNotFound):
        RedisInventoryAdapter(vendor_server.ledger.client).stock("R")


def test_an_adapter_of_a_server_run_as_a_script_is_matched_by_its_class_name(
    redis_url, env, vendor_server
):
    """``python app.py`` defines the class in __main__, which TEVO_HOLD_ADAPTER cannot name."""
    script_pos = type("VendorPos", (VendorPos,), {"__module__": "__main__"})
    ledger = vendor_server.ledger
    TevoHold(Flask("script"), service=HoldService(ledger, script_pos()), url_prefix="/tevo")
    retried = run({**env, "TEVO_HOLD_ADAPTER": VENDOR}, "invoices", "retry", "g1")
    assert retried.exit_code == 0, retried.output
    refused = run(env, "worker")
    assert refused.exit_code == 1
    assert "__main__:VendorPos" in refused.stderr
    assert "move the class to a module and set TEVO_HOLD_ADAPTER=module:VendorPos" in refused.stderr


POS_URL = "https://user:secret@POS.prod.example:443/api/tevo/"


@pytest.fixture
def http_server(redis_url: str, env: dict[str, str | None]) -> Iterator[HoldService]:
    """A server whose adapter is ``http``, calling the POS at POS_URL (never reached here)."""
    settings = Settings(redis_url=redis_url, api_keys=("k",), adapter="http", pos_url=POS_URL)
    service = build_service(settings)
    try:
        TevoHold(Flask("http"), service=service, settings=settings)
        yield service
    finally:
        service.close()


def test_the_server_records_which_pos_its_adapter_calls_without_its_credentials(http_server):
    keys, client = http_server.ledger.keys, http_server.ledger.client
    recorded = client.get(keys.server_adapter_target())
    assert recorded == b"https://pos.prod.example/api/tevo"


@pytest.mark.parametrize("command", [["worker"], ["invoices", "retry", "g1"]], ids=" ".join)
def test_a_command_whose_adapter_calls_another_pos_than_the_servers_refuses_to_run(
    env, http_server, command
):
    """The right class, the wrong POS: a staging worker on production's Redis."""
    staging = {**env, "TEVO_HOLD_ADAPTER": "http", "TEVO_HOLD_POS_URL": "https://pos.staging/api"}
    refused = run(staging, *command)
    assert refused.exit_code == 1, refused.output
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        "error: configuration_error: The server's POS adapter, "
        "tevo_hold.adapters.http:HttpPosAdapter, calls https://pos.prod.example/api/tevo, but "
        "this command's would call https://pos.staging/api: it would move tickets in another "
        "system than the server's POS."
    ), line
    assert "set TEVO_HOLD_POS_URL to the server's (https://pos.prod.example/api/tevo" in line
    assert "secret" not in line


def test_the_same_pos_spelled_otherwise_is_the_same_pos(http_server):
    """Credentials, a default port, the host's case and a trailing slash name no other POS."""
    for spelling in (
        "https://pos.prod.example/api/tevo",
        "https://other-user:other@pos.PROD.example/api/tevo/",
        "https://pos.prod.example:443/api/tevo",
    ):
        http_server.adapter = HttpPosAdapter(spelling)
        check_adapter(http_server)  # no error
    for other in ("https://pos.prod.example/api", "http://pos.prod.example/api/tevo"):
        http_server.adapter = HttpPosAdapter(other)
        with pytest.raises(errors.ConfigurationError, match="would call " + re.escape(other)):
            check_adapter(http_server)


def test_a_record_of_an_earlier_version_without_a_target_is_compared_by_class(env, http_server):
    keys, client = http_server.ledger.keys, http_server.ledger.client
    client.delete(keys.server_adapter_target())
    http_server.adapter = HttpPosAdapter("https://pos.staging/api")
    check_adapter(http_server)  # the class matches: no error


def test_a_vendors_adapter_names_its_pos_with_target(vendor_server):
    """A vendor's class whose target() depends on its configuration is checked by it too."""
    ledger = vendor_server.ledger

    class Located(VendorPos):
        def __init__(self, where: str) -> None:
            self.where = where

        def target(self) -> str:
            return self.where

    TevoHold(Flask("located"), service=HoldService(ledger, Located("pos-a")), url_prefix="/t")
    check_adapter(HoldService(ledger, Located("pos-a")))
    with pytest.raises(errors.ConfigurationError) as refused:
        check_adapter(HoldService(ledger, Located("pos-b")))
    assert "calls pos-a, but this command's would call pos-b" in str(refused.value)
    assert "configure the adapter as the server's, so that its target() answers the same" in str(
        refused.value
    )


def test_with_nothing_recorded_the_commands_run(env, redis_url, library):
    """No server started on this Redis and prefix yet (the library alone): nothing to compare."""
    library.set_quantity("R", 5)
    assert run(env, "inventory", "show", "R").exit_code == 0


@pytest.mark.parametrize("where", ["port in use", "unknown host"])
def test_a_metrics_port_the_worker_cannot_listen_on_is_one_error_line(env, where):
    """It was a traceback: OSError (Address already in use), socket.gaierror for the host."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = "127.0.0.1" if where == "port in use" else "no-such-host.invalid"
        result = run(env, "worker", "--metrics-port", str(port), "--metrics-host", host)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"error: the worker cannot serve its metrics on {host}:{port} (--metrics-host, "
        "--metrics-port): "
    ), line
    if where == "port in use":
        assert line.endswith(": Address already in use")


@pytest.mark.parametrize("lease", ["3", "2.5"])
def test_the_worker_refuses_a_lease_not_above_the_pos_budget_as_the_server_does(env, lease):
    """``worker --lease`` was never compared with the POS budget, while the server refuses
    TEVO_HOLD_LEASE <= TEVO_HOLD_POS_BUDGET: with a lease shorter than a POS call, a second
    worker claims the item when the lease ends and calls the POS for it again while the first's
    call still runs (two workers at --lease 0.3 both released a hold the POS took 1 s over)."""
    http = {
        **env,
        "TEVO_HOLD_ADAPTER": "http",
        "TEVO_HOLD_POS_URL": "http://127.0.0.1:9",
        "TEVO_HOLD_POS_BUDGET": "3",
    }
    result = run(http, "worker", "--lease", lease)
    assert result.exit_code == 2, result.output
    assert f"Error: --lease {lease} must exceed TEVO_HOLD_POS_BUDGET=3 (as TEVO_HOLD_LEASE " in (
        result.stderr
    )
    assert result.stdout == ""


CHECK_PREPARE = ["check", "http://127.0.0.1:9", "--api-key", "k", "--prepare"]
#: Each option in seconds: its command, and the least it takes (as the settings' durations: a
#: millisecond, or 0 where none means something).
SECONDS_OPTIONS = [
    (["worker"], "--lease", 0.001),
    (["backlog"], "--max-age", 0),
    (CHECK_PREPARE, "--max-expiry-wait", 0),
    (CHECK_PREPARE, "--timeout", 0.001),
]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (command, option, value)
        for command, option, least in SECONDS_OPTIONS
        for value in ("nan", "inf", "-inf", "1e400", "3153600001", "-1", f"{least - 0.0005:g}")
    ],
    ids=lambda part: " ".join(part) if isinstance(part, list) else part,
)
def test_an_option_in_seconds_is_bounded_as_the_settings_durations_are(env, command, option, value):
    """``worker --lease`` took 0, negatives and nan, and the worker started: with a lease of 0
    an item it claimed was due again at once (a second worker, or TEvo's retry, could call the
    POS at the same time), and nan crashed it at its first item. ``backlog --max-age nan`` never
    failed. Each is refused, as TEVO_HOLD_LEASE is, before anything runs."""
    result = run(env, *command, option, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': '{value}' must be " in result.stderr
    assert "seconds" in result.stderr and result.stdout == ""


def test_an_option_in_seconds_takes_up_to_100_years(env):
    assert run(env, "backlog", "--max-age", "0").exit_code == 0
    assert run(env, "backlog", "--max-age", "3153600000").exit_code == 0
