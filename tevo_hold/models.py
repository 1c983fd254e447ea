"""The values the core hands out: :class:`Hold`, its :class:`HoldStatus`, and :class:`Outcome`."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Event", "Hold", "HoldStatus", "Outcome", "Stock"]


class HoldStatus(enum.StrEnum):
    """Where a hold stands.

    ``pending`` (its POS call is running) → ``held`` → one of ``released``, ``invoicing`` →
    ``invoiced``, or ``expired`` (lapsed: its TTL passed while ``held``). ``expired`` is also what a
    release of a lapsed hold leaves. ``invoice_failed``: the POS failed the invoice; the hold can
    neither lapse nor be released, and the worker (or TEvo's retry) tries the POS again.
    """

    PENDING = "pending"
    HELD = "held"
    EXPIRED = "expired"
    RELEASED = "released"
    INVOICING = "invoicing"
    INVOICED = "invoiced"
    INVOICE_FAILED = "invoice_failed"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a hold's audit trail: what happened, when, by whom, and the POS's answer."""

    at: datetime
    event: str
    status: str
    by: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Hold:
    """One checkout's hold, identified by TEvo's ``global_id``. Times are UTC."""

    global_id: str
    remote_id: str
    quantity: int
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    tevo_order_id: int | str | None = None
    invoiced_at: datetime | None = None
    released_at: datetime | None = None
    #: The last error of a failed invoice (the POS's answer), while the hold is invoice_failed.
    last_error: str | None = None
    #: How many times the POS failed this hold's invoice.
    invoice_attempts: int = 0
    #: The audit trail, oldest first; filled only by reads that ask for it.
    events: tuple[Event, ...] = dataclasses.field(default=(), compare=False)

    def as_held(self) -> Hold:
        """The hold as its first successful hold call answered it (what a retry replays)."""
        if (
            self.status is HoldStatus.HELD
            and self.tevo_order_id is None
            and self.released_at is None
            and self.invoice_attempts == 0
            and not self.events
        ):
            return self  # already so: the common case, a hold just made
        return dataclasses.replace(
            self,
            status=HoldStatus.HELD,
            tevo_order_id=None,
            invoiced_at=None,
            released_at=None,
            last_error=None,
            invoice_attempts=0,
            events=(),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call of the service did: the ``hold`` now, and whether it was a ``replayed`` retry."""

    hold: Hold
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Stock:
    """A listing in the reference inventory: unsold tickets (``on_hand``), of them ``held``."""

    remote_id: str
    on_hand: int
    held: int
    sold: int

    @property
    def available(self) -> int:
        """Tickets a new hold can take now."""
        return max(0, self.on_hand - self.held)
