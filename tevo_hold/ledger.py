"""The Redis ledger of holds: one record per ``global_id``, changed only by ``ledger.lua``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from . import errors
from ._redis import SCRIPT_ERRORS, Script
from .keys import KeySpace
from .models import Hold, HoldStatus

__all__ = ["Claim", "Ledger"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A ledger reply: the record as it now stands, and whether the call changed it."""

    hold: Hold
    changed: bool


def _ms(value: str) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


class Ledger:
    """Hold records in Redis, each in its own hash, keyed (and hash-tagged) by ``global_id``.

    Every method is one script call: one round trip, atomic, and safe to repeat with the same
    arguments. Times come from the Redis server's clock, so every process agrees on them.
    Methods raise the typed errors of :mod:`tevo_hold.errors` that the script answers with, and
    :class:`~tevo_hold.errors.Unavailable` when Redis cannot be reached.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: KeySpace | None = None,
        retention: float = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self.retention_ms = int(retention * 1000)
        self._script = Script(client, "ledger")

    # -- hold ------------------------------------------------------------------------------
    def claim_hold(
        self,
        global_id: str,
        remote_id: str,
        quantity: int,
        *,
        ttl: float,
        lease: float,
        token: str,
    ) -> Claim:
        """Start a hold: create its ``pending`` record leased to ``token`` for ``lease`` seconds.

        ``changed`` is False when a hold with this ``global_id`` already finished (a retry to
        replay). Raises GlobalIdConflict (other remote_id or quantity) and RequestInProgress
        (another request holds the lease).
        """
        return self._call(
            global_id,
            "claim_hold",
            remote_id,
            quantity,
            int(ttl * 1000),
            int(lease * 1000),
            token,
            self.retention_ms,
        )

    def finish_hold(self, global_id: str, token: str) -> Claim:
        """Mark the pending hold of ``token`` as ``held``."""
        return self._call(global_id, "finish_hold", token, self.retention_ms)

    def abort_hold(self, global_id: str, token: str) -> None:
        """Forget the pending hold of ``token`` (its POS call failed): a retry starts afresh."""
        self._run(global_id, "abort_hold", token)

    # -- release ---------------------------------------------------------------------------
    def release(self, global_id: str) -> Claim:
        """Mark a held hold ``released`` (``expired`` if it had lapsed).

        ``changed`` is False when it was already released. Raises HoldNotFound,
        HoldAlreadyInvoiced, RequestInProgress (its hold or invoice call is running).
        """
        return self._call(global_id, "release", self.retention_ms)

    # -- invoice ---------------------------------------------------------------------------
    def claim_invoice(
        self, global_id: str, tevo_order_id: int | str, *, lease: float, token: str
    ) -> Claim:
        """Start an invoice: ``held`` (lapsed or not) becomes ``invoicing``, leased to ``token``.

        From then on the hold can neither lapse nor be released. ``changed`` is False when it was
        already invoiced under this order id. Raises HoldNotFound, HoldReleased,
        OrderIdConflict, RequestInProgress.
        """
        return self._call(
            global_id,
            "claim_invoice",
            str(tevo_order_id),
            json.dumps(tevo_order_id),
            int(lease * 1000),
            token,
            self.retention_ms,
        )

    def finish_invoice(self, global_id: str, token: str) -> Claim:
        """Mark the invoice of ``token`` done: the hold is ``invoiced``."""
        return self._call(global_id, "finish_invoice", token, self.retention_ms)

    def abort_invoice(self, global_id: str, token: str, *, lapsed: bool) -> Claim:
        """Give the hold back the state it had before the invoice of ``token``.

        With ``lapsed`` the hold's deadline is brought forward to now: the POS no longer holds
        its tickets, so the hold must read as ``expired``.
        """
        return self._call(global_id, "abort_invoice", token, "lapsed" if lapsed else "held")

    # -- read ------------------------------------------------------------------------------
    def get(self, global_id: str) -> Hold:
        """The hold as it stands now. Raises HoldNotFound."""
        return self._call(global_id, "get").hold

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, global_id: str, command: str, *args: str | int) -> Claim:
        return self.claim_from_reply(self._run(global_id, command, *args), global_id)

    def _run(self, global_id: str, command: str, *args: str | int) -> list[Any]:
        return self._script([self.keys.hold(global_id)], [command, *args])

    def claim_from_reply(
        self, reply: list[Any], global_id: str, remote_id: str | None = None
    ) -> Claim:
        """Decode a reply of a script built on ``_ledger.lua``: a Claim, or its typed error.

        ``remote_id`` names the listing in the messages of listing errors.
        """
        outcome, now, extra = reply[0], int(reply[1]), int(reply[2])
        if outcome not in ("ok", "replay"):
            raise _script_error(outcome, global_id, remote_id, extra)
        fields = dict(zip(reply[3::2], reply[4::2], strict=True))
        if not fields:
            raise errors.HoldNotFound(f"No hold has global_id {global_id!r}.")
        return Claim(_to_hold(global_id, fields, now), changed=outcome == "ok")


def _to_hold(global_id: str, f: dict[str, str], now: int) -> Hold:
    status = HoldStatus(f["st"])
    if status is HoldStatus.HELD and now >= int(f["ea"]):
        status = HoldStatus.EXPIRED
    order: Any = json.loads(f["oj"]) if "oj" in f else None
    return Hold(
        global_id=global_id,
        remote_id=f["rid"],
        quantity=int(f["qty"]),
        status=status,
        created_at=_ms(f["ca"]),
        expires_at=_ms(f["ea"]),
        tevo_order_id=order if status in (HoldStatus.INVOICING, HoldStatus.INVOICED) else None,
        invoiced_at=_ms(f["ia"]) if "ia" in f else None,
        released_at=_ms(f["ra"]) if "ra" in f else None,
    )


_DETAILS = {
    "hold_not_found": "No hold has global_id {gid!r}.",
    "global_id_conflict": (
        "global_id {gid!r} already names a hold of another remote_id or quantity."
    ),
    "hold_released": "The hold {gid!r} was released; its tickets went back to the listing.",
    "hold_already_invoiced": "The hold {gid!r} was invoiced; a sale is not undone by a release.",
    "order_id_conflict": "The hold {gid!r} is invoiced under another tevo_order_id.",
    "request_in_progress": "Another request for global_id {gid!r} is running; retry shortly.",
    "listing_not_found": "No listing has remote_id {rid!r}.",
    "insufficient_quantity": "Listing {rid!r} has {extra} tickets available.",
    "hold_expired": "The hold {gid!r} lapsed and its tickets are no longer available.",
}


def _script_error(
    code: str, global_id: str, remote_id: str | None, extra: int
) -> errors.TevoHoldError:
    """The exception for a script's error ``code``; ``extra`` is its third reply item."""
    cls = SCRIPT_ERRORS.get(code)
    if cls is None:  # pragma: no cover - a script answering an unknown code is a bug
        return errors.InternalError(f"a ledger script answered an unknown outcome {code!r}")
    detail = _DETAILS.get(code, cls.title).format(gid=global_id, rid=remote_id, extra=extra)
    if cls is errors.RequestInProgress:
        return errors.RequestInProgress(detail, retry_after=math.ceil(extra / 1000))
    if cls is errors.InsufficientQuantity:
        return errors.InsufficientQuantity(detail, available=extra)
    return cls(detail)
