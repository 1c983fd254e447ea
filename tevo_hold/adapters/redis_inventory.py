"""The reference adapter: the inventory itself, kept in Redis by ``inventory.lua``."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from redis.cluster import RedisCluster

from .. import errors
from .._redis import RedisClient, Script
from ..keys import KeySpace, encode_id
from ..ledger import Claim, Ledger
from ..models import Hold, Stock
from ..validation import MAX_STOCK, _integer, check_id
from .base import PosAdapter

__all__ = ["SAMPLE_INVENTORY", "RedisInventoryAdapter", "load_inventory"]

log = logging.getLogger("tevo_hold")

#: The demo listings the embedded default starts with (demo-1: 10 tickets, demo-2: 4,
#: demo-sold-out: 0), shipped in the package so that an installed one has them too.
SAMPLE_INVENTORY = Path(__file__).resolve().parent.parent / "sample_inventory.json"


class RedisInventoryAdapter(PosAdapter):
    """A POS of its own for a seller who has none: listings and their stock in Redis.

    Each listing keeps its unsold tickets (``on_hand``), the holds on it (quantity and deadline
    per ``global_id``) and its sold count, under one hash tag. Each call is one atomic script that
    checks and changes the stock in the same step, so concurrent holds never oversell, whatever
    the number of processes. A hold lapses exactly at its deadline: every call first drops the
    holds whose deadline has passed, with no background process.
    """

    #: Holds here lapse by themselves at their deadline: the worker need not release them.
    lapses_on_its_own = True

    def __init__(
        self,
        client: RedisClient,
        *,
        keys: KeySpace | None = None,
        retention: float = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self.retention_ms = int(retention * 1000)
        self._script = Script(client, "inventory")
        self._fused = Script(client, "fused")

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        deadline = int(expires_at.timestamp() * 1000)
        self._call(remote_id, global_id, "take", global_id, quantity, deadline)

    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        self._call(remote_id, None, "release", global_id)

    def invoice(
        self,
        *,
        global_id: str,
        remote_id: str,
        quantity: int,
        tevo_order_id: int | str,
        expires_at: datetime | None = None,
    ) -> None:
        """Sell the hold's tickets: those it holds on the books, even past its deadline, or as
        many again if its hold lapsed and they are still there; else InsufficientQuantity.

        Given the hold's deadline ``expires_at`` (the service's step-by-step path gives it),
        HoldExpired instead when the sale comes after it and the tickets are gone: the hold
        lapsed here before the sale, and others took its tickets.
        """
        args: list[str | int] = ["sell", global_id, quantity, self.retention_ms]
        if expires_at is not None:
            args.append(int(expires_at.timestamp() * 1000))
        self._call(remote_id, global_id, *args)

    # -- one round trip with the ledger ---------------------------------------------------
    def fuses_with(self, ledger: Ledger) -> bool:
        """True when ``ledger`` lives in this adapter's Redis, so one script can change both.

        (Not on a Redis Cluster: a hold's record and its listing lie in different hash slots.)
        """
        return ledger.client is self.client and not isinstance(self.client, RedisCluster)

    def hold_recorded(
        self,
        ledger: Ledger,
        *,
        global_id: str,
        remote_id: str,
        quantity: int,
        ttl: float,
        actor: str = "api",
    ) -> Claim:
        """Check the ledger and the stock, take the tickets and record the hold, atomically.

        ``changed`` is False for a retry of a hold already made. Raises what
        :meth:`Ledger.claim_hold` and :meth:`hold` raise.
        """
        keys = [*ledger.keys.hold(global_id), *self._keys(remote_id, global_id)]
        ttl_ms = int(ttl * 1000)
        args: list[str | int] = [
            "hold",
            global_id,
            actor,
            remote_id,
            quantity,
            ttl_ms,
            ledger.retention_ms,
        ]
        return ledger.claim_from_reply(self._fused(keys, args), global_id, remote_id)

    def settle_recorded(
        self, ledger: Ledger, *, hold: Hold, token: str, retry_in: float, actor: str = "api"
    ) -> Claim:
        """Sell the tickets of the invoice ``token`` claimed, and record it invoiced, atomically.

        If the hold lapsed and its tickets are gone, the claim is given back (the hold reads
        expired) and HoldExpired is raised. If the listing is gone, the invoice fails (retried
        in ``retry_in`` seconds) and ListingNotFound is raised.
        """
        gid = hold.global_id
        keys = [*ledger.keys.hold(gid), *self._keys(hold.remote_id, gid)]
        retry_ms = int(retry_in * 1000)
        args: list[str | int] = [
            "settle",
            gid,
            actor,
            token,
            hold.quantity,
            self.retention_ms,
            retry_ms,
        ]
        return ledger.claim_from_reply(self._fused(keys, args), gid, hold.remote_id)

    def release_recorded(
        self, ledger: Ledger, *, global_id: str, lease: float, actor: str = "api"
    ) -> Claim | None:
        """:meth:`Ledger.release` and :meth:`release` at once, knowing only the ``global_id``.

        None, having changed nothing, for a hold made step by step (its record does not name
        its listing's keys): release it with those two calls. Raises what
        :meth:`Ledger.release` raises.
        """
        args: list[str | int] = [
            "release",
            global_id,
            actor,
            ledger.retention_ms,
            int(lease * 1000),
            encode_id(global_id),
        ]
        reply = self._fused(ledger.keys.hold(global_id), args)
        return None if reply[0] == "unfused" else ledger.claim_from_reply(reply, global_id)

    def invoice_recorded(
        self,
        ledger: Ledger,
        *,
        global_id: str,
        tevo_order_id: int | str,
        token: str,
        lease: float,
        retry_base: float,
        retry_cap: float,
        actor: str = "api",
    ) -> Claim | None:
        """:meth:`Ledger.claim_invoice` and :meth:`settle_recorded` at once, from the ``global_id``.

        None, having changed nothing, for a hold made step by step: invoice it with those two.
        A failed sale (the listing is gone) is retried after ``retry_base`` seconds doubled per
        earlier failure, at most ``retry_cap`` (as :meth:`HoldService.retry_delay`). Raises what
        both raise.
        """
        args: list[str | int] = [
            "invoice",
            global_id,
            actor,
            str(tevo_order_id),
            json.dumps(tevo_order_id),
            int(lease * 1000),
            token,
            ledger.retention_ms,
            encode_id(global_id),
            int(retry_base * 1000),
            int(retry_cap * 1000),
        ]
        reply = self._fused(ledger.keys.hold(global_id), args)
        return None if reply[0] == "unfused" else ledger.claim_from_reply(reply, global_id)

    # -- stock management (the CLI's and the tests') ------------------------------------
    def set_quantity(self, remote_id: str, on_hand: int) -> Stock:
        """Set the number of unsold tickets of a listing (created if new). Held ones count.

        Raises InvalidRequest for a ``remote_id`` the API would refuse (an empty one, say: a
        listing no hold could ever name) or an ``on_hand`` out of bounds; nothing is set then.
        """
        check_id("remote_id", remote_id)
        if on_hand < 0:
            raise errors.InvalidRequest("on_hand must be zero or more", {"quantity": ["< 0"]})
        if on_hand > MAX_STOCK:
            raise errors.InvalidRequest(
                f"on_hand must be at most {MAX_STOCK}", {"quantity": [f"> {MAX_STOCK}"]}
            )
        return self._call(remote_id, None, "set", on_hand)

    def stock(self, remote_id: str) -> Stock:
        """The listing's stock now. Raises ListingNotFound."""
        return self._call(remote_id, None, "show")

    def _keys(self, remote_id: str, global_id: str | None) -> list[str]:
        keys = list(self.keys.listing(remote_id))
        if global_id is not None:
            keys.append(self.keys.sale(remote_id, global_id))
        return keys

    def _call(self, remote_id: str, global_id: str | None, *args: str | int) -> Stock:
        outcome, on_hand, held, sold = self._script(self._keys(remote_id, global_id), args)
        stock = Stock(remote_id, int(on_hand), int(held), int(sold))
        if outcome == "ok":
            return stock
        if outcome == "listing_not_found":
            raise errors.ListingNotFound(f"No listing has remote_id {remote_id!r}.")
        if outcome == "insufficient_quantity":
            raise errors.InsufficientQuantity(
                f"Listing {remote_id!r} has {stock.available} tickets available.",
                available=stock.available,
            )
        if outcome == "hold_expired":
            raise errors.HoldExpired(
                f"The hold {global_id!r} lapsed on listing {remote_id!r} before the sale, and "
                f"its tickets are gone ({stock.available} available)."
            )
        if outcome == "global_id_conflict":
            raise errors.GlobalIdConflict(
                f"global_id {global_id!r} holds another quantity of listing {remote_id!r}."
            )
        raise errors.InternalError(f"inventory.lua answered an unknown outcome {outcome!r}")


def load_inventory(adapter: RedisInventoryAdapter, path: str | Path) -> int:
    """Stock the listings of a JSON file ``{"listings": [{"remote_id": ..., "quantity": ...}]}``.

    Every listing is checked before any is set, so a file refused changes nothing. Returns how
    many listings were set. Raises ConfigurationError naming the file if it is unreadable or not
    of that shape, or a listing's remote_id is no id the API takes, or its quantity is not a
    whole number from 0 to MAX_STOCK (10.7 is refused, not stocked as 10; so are true and "10").
    """
    where = f"inventory file {str(path)!r}"
    try:
        listings = json.loads(Path(path).read_text("utf-8"))["listings"]
        items = [(item["remote_id"], item["quantity"]) for item in listings]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise errors.ConfigurationError(
            f'{where}: expected {{"listings": [{{"remote_id": "...", "quantity": 10}}]}} ('
            f"{type(exc).__name__}: {exc})"
        ) from exc
    pairs = []
    for number, (raw_id, quantity) in enumerate(items, 1):
        try:
            # a listing's id as the API takes it: a string (a whole number reads as its digits,
            # as a POS export may write it); null, true, 1.5, objects are no id
            if isinstance(raw_id, int) and not isinstance(raw_id, bool):
                raw_id = str(raw_id)
            remote_id = check_id("remote_id", raw_id)
        except errors.InvalidRequest as exc:
            raise errors.ConfigurationError(f"{where}: listing {number}: {exc.detail}") from None
        on_hand = _integer(quantity)
        if on_hand is None or not 0 <= on_hand <= MAX_STOCK:
            raise errors.ConfigurationError(
                f"{where}: listing {number} ({remote_id!r}): its quantity must be a whole number "
                f"from 0 to {MAX_STOCK}, not {json.dumps(quantity)[:40]}"
            )
        pairs.append((remote_id, on_hand))
    for remote_id, on_hand in pairs:
        adapter.set_quantity(remote_id, on_hand)
    log.warning("tevo-hold stocked %d listings from %s", len(pairs), path)
    return len(pairs)
