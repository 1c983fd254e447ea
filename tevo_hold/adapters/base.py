"""The interface between tevo-hold and a POS (the system of record for tickets)."""

from __future__ import annotations

import abc
from datetime import datetime

__all__ = ["PosAdapter"]


class PosAdapter(abc.ABC):
    """What tevo-hold needs from a POS: hold, release and sell tickets of a listing.

    tevo-hold calls these methods after it has validated the request and recorded it in its
    ledger, so an adapter sees only well-formed calls: ids are non-empty strings, quantities
    positive integers. The ledger does the bookkeeping TEvo's contract needs (idempotent retries,
    conflicts, lifetimes); the adapter only moves tickets.

    **Every method is idempotent per ``global_id``.** tevo-hold may call a method more than once
    for one ``global_id`` with the same arguments: when TEvo retries after a timeout, when a
    request died half-way, or when the outcome of an earlier call is unknown. A second ``hold``
    for a ``global_id`` that is already held must succeed without taking more tickets (and should
    move its deadline to the one given), a second ``release`` must succeed without giving back
    more, a second ``invoice`` must succeed without selling twice. Use the ``global_id`` as your
    POS's idempotency key.

    **Calls are concurrent, for one ``global_id`` too.** Each process (a server worker, a
    ``tevo-hold worker``) builds one adapter and calls it from all its threads at once, so it
    must be thread-safe. Calls for one ``global_id`` can overlap, in one process or in two: a
    ``hold`` slower than the lease with the retry that took it over when the lease ended; an
    ``invoice`` with the worker's retry of it; a ``hold`` with the ``release`` that compensates
    it. So the idempotency must be atomic in the POS: "look for a sale with this key, then make
    one if there is none" in two steps sells twice when two calls overlap; use a unique
    constraint on the key, or a lock or transaction around the check and the change.

    Signal failures only with these exceptions from :mod:`tevo_hold.errors`; anything else
    (another of its exceptions, a SystemExit too) becomes ``500 internal_error``, a failure
    whose outcome is unknown (see :func:`tevo_hold.service.adapter_call`):

    - :class:`~tevo_hold.errors.ListingNotFound` (404 on a hold, 502 on an invoice, which is
      kept and retried) - no listing has this ``remote_id``;
    - :class:`~tevo_hold.errors.InsufficientQuantity` (409) - fewer tickets than asked for
      (from ``invoice``, :class:`~tevo_hold.errors.HoldExpired` says the same);
    - :class:`~tevo_hold.errors.PosError` (502) - the POS refused (nothing changed) or failed;
      ``PosError(detail, outcome_unknown=True)`` when it may have acted first (a 5xx);
    - :class:`~tevo_hold.errors.Unavailable` (503) - the POS could not be reached, nothing changed;
    - :class:`~tevo_hold.errors.PosTimeout` (504) - no answer in time, the outcome is unknown.

    Answer quickly: TEvo wants every endpoint to answer well within 5 seconds, and the adapter's
    call is most of that budget.

    What tevo-hold does around these calls, so the adapter need not: a hold whose ``hold`` call
    has no known outcome (PosTimeout, or a PosError with ``outcome_unknown``) is released later
    by the worker unless TEvo's retry completes it; a hold that lapses is released by the worker
    at its deadline (unless ``lapses_on_its_own``); an ``invoice`` that fails is retried by the
    worker with backoff until it succeeds.
    """

    #: True when the POS lets holds lapse at ``expires_at`` by itself, so the worker need not
    #: release lapsed holds there. False by default: the worker calls ``release`` at the deadline.
    lapses_on_its_own: bool = False

    @abc.abstractmethod
    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        """Put ``quantity`` tickets of listing ``remote_id`` on hold for ``global_id``.

        ``expires_at`` (UTC) is when tevo-hold considers the hold lapsed; a POS with holds of
        its own should let this one lapse then too, or later. On success the tickets are no longer
        available to anyone else. Raises ListingNotFound or InsufficientQuantity when it cannot.
        """

    @abc.abstractmethod
    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        """Give back the tickets held for ``global_id``. Succeeds too when there is nothing to
        give back (released before, lapsed, or never held). Never undoes a sale: a release of a
        ``global_id`` that was invoiced does nothing."""

    @abc.abstractmethod
    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        """Sell the tickets held for ``global_id`` to TEvo as the buyer, order ``tevo_order_id``.

        If the hold lapsed in the POS, try once to take ``quantity`` tickets of the listing
        again and sell those; raise InsufficientQuantity only when they are gone. The buyer
        has already paid: anything but success here needs the seller's attention.
        """

    def ready(self) -> bool | None:
        """Whether the POS answers now (for ``GET /readyz``); None when the adapter cannot tell.

        Optional; answer quickly (a second or two at most). The default cannot tell.
        """
        return None

    def target(self) -> str | None:
        """Which POS this adapter moves tickets in, as text with no secret in it (its base URL,
        say), or None when its class says it all. Optional; the default is None.

        The server records it in Redis beside the adapter's class when it starts, and
        ``tevo-hold worker`` and the commands that call the POS refuse to run when theirs is
        another: a worker pointed at a staging POS would otherwise release production's lapsed
        holds and retry its failed invoices there, and record them done. Answer the same text
        wherever the adapter runs (the server's hosts and the worker's).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract on purpose
        """Release the adapter's resources (connections, sessions). Optional."""
