"""The ``tevo-hold`` command: inventory, holds, failed invoices, API keys, the worker, the checker.

It reads the same ``TEVO_HOLD_*`` settings as the server, so it works on the same Redis.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from . import errors
from .adapters.identity import check_adapter
from .adapters.redis_inventory import RedisInventoryAdapter, load_inventory
from .auth import ApiKey, KeyStore
from .checker import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    Listing,
    Report,
    Result,
    base_url_of,
    prepare_listings,
    run_checks,
)
from .ledger import Backlog
from .models import Hold, HoldStatus, Stock
from .schemas import HoldDetailSchema
from .service import HoldService, build_service
from .settings import MAX_SECONDS, MIN_SECONDS, Settings, seconds
from .validation import MAX_STOCK

__all__ = ["main"]


class _Context:
    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._service: HoldService | None = None
        self._adapter_checked = False

    @property
    def settings(self) -> Settings:
        """The ``TEVO_HOLD_*`` settings of the environment (a bad one: an error line, exit 1)."""
        if self._settings is None:
            self._settings = _run(Settings.from_env)
        return self._settings

    @property
    def service(self) -> HoldService:
        if self._service is None:
            settings = self.settings
            if settings.embedded:
                raise click.UsageError(
                    "TEVO_HOLD_REDIS_URL is unset (or memory://): the embedded default keeps its "
                    "state inside the server's own process, where this command cannot reach it "
                    "(a server there runs its worker itself). Set TEVO_HOLD_REDIS_URL to the "
                    "Redis the server uses."
                )
            self._service = _run(lambda: build_service(settings))
        return self._service

    @property
    def pos_service(self) -> HoldService:
        """The service, for a command that calls the POS: refused (an error line, exit 1) when
        the server recorded another adapter (see :mod:`tevo_hold.adapters.identity`)."""
        service = self.service
        if not self._adapter_checked:
            _run(lambda: check_adapter(service))
            self._adapter_checked = True
        return service

    def close(self) -> None:
        """Close the Redis connections the command opened."""
        if self._service is not None:
            self._service.close()
            self._service = None

    @property
    def key_store(self) -> KeyStore:
        ledger = self.service.ledger
        return KeyStore(ledger.client, keys=ledger.keys)

    @property
    def inventory(self) -> RedisInventoryAdapter:
        if not isinstance(self.service.adapter, RedisInventoryAdapter):
            raise click.UsageError("inventory commands need the reference (Redis) adapter")
        adapter = self.pos_service.adapter
        assert isinstance(adapter, RedisInventoryAdapter)
        return adapter


pass_ctx = click.make_pass_decorator(_Context, ensure=True)


class _Seconds(click.FloatRange):
    """An option in seconds, bounded as the settings' durations are (finite, from a
    millisecond, or from 0 where none means something, to 100 years): see
    :func:`tevo_hold.settings.seconds`. (click's FloatRange alone takes nan.)"""

    def __init__(self, *, least: float = MIN_SECONDS) -> None:
        super().__init__(min=least, max=MAX_SECONDS)  # --help shows the range
        self.least = least

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        try:
            return seconds(number, least=self.least)
        except ValueError as exc:
            self.fail(f"{value!r} {exc}", param, ctx)


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
@click.pass_context
def main(click_ctx: click.Context) -> None:
    """tevo-hold: TEvo order integration (hold, release, invoice) on Redis."""
    click_ctx.call_on_close(click_ctx.ensure_object(_Context).close)


@main.group()
def inventory() -> None:
    """The reference adapter's listings."""


@inventory.command("set")
@click.argument("remote_id")
@click.argument("quantity", type=click.IntRange(min=0, max=MAX_STOCK))
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
    """Print the hold GLOBAL_ID as JSON, with its audit trail."""
    hold: Hold = _run(lambda: ctx.service.get(global_id=global_id, history=True))
    click.echo(json.dumps(HoldDetailSchema().dump(hold), indent=2, ensure_ascii=False))


@holds.command("list")
@click.option("--status", type=click.Choice([s.value for s in HoldStatus]), help="Only these.")
@click.option("--listing", "remote_id", help="Only holds of this remote_id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def holds_list(ctx: _Context, status: str | None, remote_id: str | None, as_json: bool) -> None:
    """List holds (a scan of every record: for operators, not for hot paths)."""
    found = 0
    for hold in _run(lambda: list(ctx.service.ledger.scan())):
        if (status and hold.status != status) or (remote_id and hold.remote_id != remote_id):
            continue
        found += 1
        _print_hold(hold, as_json)
    if not as_json:
        click.echo(f"{found} holds", err=True)


@main.group()
def invoices() -> None:
    """Invoices the POS failed (TEvo's buyer has paid: they are retried until they succeed)."""


@invoices.command("failed")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def invoices_failed(ctx: _Context, as_json: bool) -> None:
    """List the holds whose invoice failed, with the POS's last answer."""
    ledger = ctx.service.ledger
    found = 0
    for global_id in _run(lambda: list(ledger.scheduled("i"))):
        try:
            hold = ledger.get(global_id)
        except errors.HoldNotFound:
            continue
        if hold.status is HoldStatus.INVOICE_FAILED:
            found += 1
            _print_hold(hold, as_json)
    if not as_json:
        click.echo(f"{found} failed invoices", err=True)


@invoices.command("retry")
@click.argument("global_id")
@pass_ctx
def invoices_retry(ctx: _Context, global_id: str) -> None:
    """Retry the failed invoice of GLOBAL_ID now, with the server's POS adapter."""
    service = ctx.pos_service
    hold: Hold = _run(lambda: service.get(global_id=global_id))
    if hold.status is not HoldStatus.INVOICE_FAILED or hold.tevo_order_id is None:
        click.echo(f"error: the hold {global_id!r} is {hold.status}, not invoice_failed", err=True)
        sys.exit(1)
    order = hold.tevo_order_id
    done = _run(lambda: service.invoice(global_id=global_id, tevo_order_id=order, actor="cli"))
    click.echo(f"{global_id}: {done.hold.status}")


@main.group()
def keys() -> None:
    """Managed API keys, kept in Redis as SHA-256 digests only (besides TEVO_HOLD_API_KEYS)."""


@keys.command("create")
@click.argument("name")
@pass_ctx
def keys_create(ctx: _Context, name: str) -> None:
    """Make an API key named NAME and print it: the only time it is ever shown.

    The key goes alone on standard output (for scripts); a reminder goes to standard error.
    """
    key, plaintext = _run(lambda: ctx.key_store.create(name))
    click.echo(plaintext)
    click.echo(
        f"created API key {key.name!r} ({key.prefix}...): store it now, it cannot be shown again",
        err=True,
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def keys_list(ctx: _Context, as_json: bool) -> None:
    """List the managed keys: name, prefix, created, last used, revoked (never the keys)."""
    found: list[ApiKey] = _run(lambda: ctx.key_store.list())
    for key in found:
        fields = {
            "name": key.name,
            "prefix": key.prefix,
            "created_at": _when(key.created_at),
            "last_used_at": _when(key.last_used_at),
            "revoked_at": _when(key.revoked_at),
        }
        if as_json:
            click.echo(json.dumps(fields))
        else:
            click.echo(
                f"{key.name}  {key.prefix}...  created={fields['created_at']}"
                f"  last_used={fields['last_used_at'] or 'never'}"
                f"  {'REVOKED ' + str(fields['revoked_at']) if key.revoked else 'active'}"
            )
    if not as_json:
        click.echo(f"{len(found)} keys", err=True)


@keys.command("revoke")
@click.argument("name")
@pass_ctx
def keys_revoke(ctx: _Context, name: str) -> None:
    """Revoke the key NAME: every process refuses it from the next request on."""
    key: ApiKey = _run(lambda: ctx.key_store.revoke(name))
    click.echo(f"revoked API key {key.name!r} ({key.prefix}...) at {_when(key.revoked_at)}")


@main.command("backlog")
@click.option(
    "--max-age",
    type=_Seconds(least=0),
    default=None,
    help="Exit 1 when the oldest item has waited longer than this many seconds (a check for "
    "cron or a monitoring agent).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def backlog(ctx: _Context, max_age: float | None, as_json: bool) -> None:
    """The worker's backlog: work due now that no worker has taken, and how long the oldest has
    waited past its time (what /metrics serves as tevo_hold_due_items and
    tevo_hold_due_oldest_seconds). A backlog that grows old means no worker is doing the work.
    """
    found: Backlog = _run(ctx.service.ledger.backlog)
    if as_json:
        click.echo(json.dumps({"items": found.items, "oldest_seconds": found.oldest_seconds}))
    else:
        items = "1 item" if found.items == 1 else f"{found.items} items"
        click.echo(f"{items} due, the oldest waiting {found.oldest_seconds:.1f} s")
    if max_age is not None and found.oldest_seconds > max_age:
        click.echo(
            f"error: backlog: the oldest item has waited {found.oldest_seconds:.1f} s, over "
            f"--max-age {max_age:g}: is a tevo-hold worker running?",
            err=True,
        )
        sys.exit(1)


def _when(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@main.command("worker")
@click.option("--name", default=None, help="Its name in the audit trail (default: worker-PID).")
@click.option(
    "--lease",
    type=_Seconds(),
    default=None,
    help="Seconds per item: a POS call longer than this may be made again by another worker. "
    "Default: TEVO_HOLD_LEASE (as the server's requests). With the http adapter it must exceed "
    "TEVO_HOLD_POS_BUDGET, as TEVO_HOLD_LEASE must.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve its Prometheus metrics (POS calls, lapsed holds, failed invoices, the backlog of "
    "due work) on this port.",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port."
)
@pass_ctx
def worker(
    ctx: _Context,
    name: str | None,
    lease: float | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Keep the POS in step: release lapsed holds, compensate, retry failed invoices.

    Runs until SIGTERM or SIGINT (it finishes the item in hand first); run one or more beside
    the server, on any host. Each makes one POS call at a time: run more to drain a backlog
    faster (they never call the POS twice for one item). Logs are JSON lines on standard error.
    It needs the server's settings, TEVO_HOLD_ADAPTER included (an adapter plugged in code is
    named package.module:Class): it refuses to start when the server recorded another adapter.
    """
    import os
    import signal
    import threading

    from .observability import configure_logging
    from .worker import Worker

    # The settings and the service first: a mistake in them is one error line, before anything
    # starts.
    settings = ctx.settings
    if lease is None:
        lease = settings.lease  # above the POS budget: Settings.check makes sure
    elif settings.adapter == "http" and lease <= settings.pos_budget:
        # Two workers would call the POS for one item: the second claims it when the first's
        # lease ends, while the first's call (up to the budget) may still be running.
        raise click.UsageError(
            f"--lease {lease:g} must exceed TEVO_HOLD_POS_BUDGET={settings.pos_budget:g} (as "
            "TEVO_HOLD_LEASE must, its default): a POS call may last that long, and another "
            "worker takes the item over when the lease ends, calling the POS for it again"
        )
    runner = Worker(
        ctx.pos_service,
        lease=lease,
        interval=settings.worker_interval,
        name=name or f"worker-{os.getpid()}",
    )
    if metrics_port is not None:
        from prometheus_client import REGISTRY, start_http_server

        from .metrics import BacklogCollector

        try:
            start_http_server(metrics_port, addr=metrics_host)
        except OSError as exc:  # the port in use, a host that is not one (socket.gaierror)...
            click.echo(
                f"error: the worker cannot serve its metrics on {metrics_host}:{metrics_port} "
                f"(--metrics-host, --metrics-port): {exc.strerror or exc}",
                err=True,
            )
            sys.exit(1)
        REGISTRY.register(BacklogCollector(runner.service.ledger.backlog))
    configure_logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner.run(stop)


def _print_hold(hold: Hold, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(HoldDetailSchema().dump(hold), ensure_ascii=False))
        return
    line = (
        f"{hold.global_id}  {hold.status}  remote_id={hold.remote_id}  quantity={hold.quantity}"
        f"  expires_at={hold.expires_at.isoformat()}"
    )
    if hold.tevo_order_id is not None:
        line += f"  tevo_order_id={hold.tevo_order_id}"
    if hold.last_error:
        line += f"  attempts={hold.invoice_attempts}  last_error={hold.last_error!r}"
    click.echo(line)


def _run(call: Any) -> Any:
    try:
        return call()
    except errors.TevoHoldError as exc:
        click.echo(f"error: {exc.code}: {exc.detail}", err=True)
        sys.exit(1)


# -- check: the conformance checker (tevo_hold.checker) -------------------------------------


def _listing(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Listing]:
    try:
        return [Listing.parse(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("check")
@click.argument("url")
@click.option(
    "--api-key",
    envvar="TEVO_HOLD_CHECK_API_KEY",
    required=True,
    help="The API key the server accepts (env TEVO_HOLD_CHECK_API_KEY).",
)
@click.option(
    "--listing",
    "listings",
    multiple=True,
    metavar="REMOTE_ID:QUANTITY",
    callback=_listing,
    help="A listing and its available tickets; give it twice. The first is the flow listing "
    "(at least 4 tickets; each run sells 1), the second the small listing, where tickets are "
    "counted: the concurrency check and the stock checks (its whole stock, exactly, fewer "
    "tickets than --concurrency; left as found). Without a second, those are not run.",
)
@click.option(
    "--prepare",
    is_flag=True,
    help="Instead of --listing: stock two fresh listings (10 tickets for the flows, "
    "--concurrency/4 for the race) in the reference inventory of the server's Redis "
    "(--redis-url; other TEVO_HOLD_* settings, such as the key prefix, as the server's).",
)
@click.option(
    "--redis-url",
    envvar="TEVO_HOLD_REDIS_URL",
    help="With --prepare: the Redis the server uses (env TEVO_HOLD_REDIS_URL).",
)
@click.option(
    "--max-expiry-wait",
    type=_Seconds(least=0),
    default=5.0,
    show_default=True,
    help="Seconds the expiry check may wait for a hold to lapse; with a longer server TTL it "
    "is not run (SKIP: neither a pass nor a failure). On the small listing it then waits up to "
    "the rest of it (at least 1 s) for the lapsed hold's tickets to come back.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=2, max=MAX_CONCURRENCY),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="One-ticket holds fired at once at the small listing (each from a thread of its own).",
)
@click.option(
    "--timeout",
    type=_Seconds(),
    default=10.0,
    show_default=True,
    help="Seconds to wait for each answer.",
)
@click.option(
    "--sign",
    is_flag=True,
    help="Sign every call (X-Signature, as the README's request signing says, under the key it "
    "sends): for a server with TEVO_HOLD_REQUIRE_SIGNATURE=true.",
)
def check(
    url: str,
    api_key: str,
    listings: list[Listing],
    prepare: bool,
    redis_url: str | None,
    max_expiry_wait: float,
    concurrency: int,
    timeout: float,
    sign: bool,
) -> None:
    """Check the server at URL against the HTTP contract, playing TEvo's side.

    Runs the flows (hold, invoice, release, their retries), the documented conflicts, not-founds
    and bad input, the API-key checks; on a small listing, whose stock it counts, a hold beyond
    it, concurrent holds and its tickets coming back after releases; and, when holds live at
    most --max-expiry-wait seconds, a hold lapsing (and its tickets coming back). It counts the
    flow listing's tickets (by the `available` of a refused hold; SKIP when the server does not
    give it) around the sale and around a release. A 429 (the key's rate limit) fails the check
    it came in and stops the run; cleanup releases are retried after Retry-After for up to
    --timeout. Prints a table (PASS, FAIL or SKIP per check, with the latency of its calls) and
    exits 0 only when no check failed; 1 when one did, 2 on bad usage. Every run uses fresh
    global_ids, so runs never collide.
    """
    try:
        base_url_of(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if prepare == bool(listings):
        raise click.UsageError("give either --prepare or --listing REMOTE_ID:QUANTITY (up to two)")
    if len(listings) > 2:
        raise click.UsageError("--listing is given at most twice: the flow listing, the small one")
    if prepare:
        if not redis_url:
            raise click.UsageError("--prepare needs --redis-url (or TEVO_HOLD_REDIS_URL)")
        listings = list(_run(lambda: prepare_listings(redis_url, concurrency=concurrency)))
    try:
        report: Report = run_checks(
            url,
            api_key,
            listings=listings,
            concurrency=concurrency,
            max_expiry_wait=max_expiry_wait,
            timeout=timeout,
            sign=sign,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    colours = {Result.PASS: "green", Result.FAIL: "red", Result.SKIP: "yellow"}
    click.echo(report.format(lambda result, text: click.style(text, fg=colours[result])))
    sys.exit(0 if report.ok else 1)
