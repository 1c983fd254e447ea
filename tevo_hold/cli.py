"""The ``tevo-hold`` command: manage the reference inventory and read holds, from the shell.

It reads the same ``TEVO_HOLD_*`` settings as the server, so it works on the same Redis.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import errors
from .adapters.redis_inventory import RedisInventoryAdapter
from .app import load_inventory
from .models import Hold, Stock
from .schemas import HoldSchema
from .service import HoldService, build_service
from .settings import Settings

__all__ = ["main"]


class _Context:
    def __init__(self) -> None:
        self._service: HoldService | None = None

    @property
    def service(self) -> HoldService:
        if self._service is None:
            settings = Settings.from_env()
            if settings.embedded:
                raise click.UsageError(
                    "TEVO_HOLD_REDIS_URL is unset: the embedded default keeps its state inside "
                    "the server's own process, where this command cannot reach it. Set "
                    "TEVO_HOLD_REDIS_URL to the Redis the server uses."
                )
            self._service = build_service(settings)
        return self._service

    @property
    def inventory(self) -> RedisInventoryAdapter:
        adapter = self.service.adapter
        if not isinstance(adapter, RedisInventoryAdapter):
            raise click.UsageError("inventory commands need the reference (Redis) adapter")
        return adapter


pass_ctx = click.make_pass_decorator(_Context, ensure=True)


def _print_stock(stock: Stock, as_json: bool) -> None:
    fields = {
        "remote_id": stock.remote_id,
        "on_hand": stock.on_hand,
        "held": stock.held,
        "available": stock.available,
        "sold": stock.sold,
    }
    if as_json:
        click.echo(json.dumps(fields))
    else:
        click.echo("  ".join(f"{k}={v}" for k, v in fields.items()))


@click.group()
def main() -> None:
    """tevo-hold: TEvo order integration (hold, release, invoice) on Redis."""


@main.group()
def inventory() -> None:
    """The reference adapter's listings."""


@inventory.command("set")
@click.argument("remote_id")
@click.argument("quantity", type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def inventory_set(ctx: _Context, remote_id: str, quantity: int, as_json: bool) -> None:
    """Set listing REMOTE_ID's unsold tickets (held ones included) to QUANTITY."""
    _print_stock(_run(lambda: ctx.inventory.set_quantity(remote_id, quantity)), as_json)


@inventory.command("show")
@click.argument("remote_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def inventory_show(ctx: _Context, remote_id: str, as_json: bool) -> None:
    """Show listing REMOTE_ID's stock: on hand, held, available, sold."""
    _print_stock(_run(lambda: ctx.inventory.stock(remote_id)), as_json)


@inventory.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@pass_ctx
def inventory_load(ctx: _Context, path: str) -> None:
    """Set every listing of a JSON file {"listings": [{"remote_id", "quantity"}]}."""
    count = _run(lambda: load_inventory(ctx.inventory, path))
    click.echo(f"stocked {count} listings")


@main.group()
def holds() -> None:
    """Holds in the ledger."""


@holds.command("show")
@click.argument("global_id")
@pass_ctx
def holds_show(ctx: _Context, global_id: str) -> None:
    """Print the hold GLOBAL_ID as JSON."""
    hold: Hold = _run(lambda: ctx.service.get(global_id=global_id))
    click.echo(json.dumps(HoldSchema().dump(hold), indent=2))


def _run(call: Any) -> Any:
    try:
        return call()
    except errors.TevoHoldError as exc:
        click.echo(f"error: {exc.code}: {exc.detail}", err=True)
        sys.exit(1)
