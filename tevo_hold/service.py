"""The core: :class:`HoldService`, TEvo's hold / release / invoice, independent of HTTP."""

from __future__ import annotations

import contextlib
import uuid

import redis

from . import errors
from .adapters.base import PosAdapter
from .adapters.redis_inventory import RedisInventoryAdapter
from .connection import connect
from .keys import KeySpace
from .ledger import Ledger
from .models import Hold, Outcome
from .settings import Settings
from .validation import check_id, check_order_id, check_quantity

__all__ = ["HoldService", "build_service"]


class HoldService:
    """TEvo's three calls (and a read) with the semantics of the HTTP API, for any POS adapter.

    The ``ledger`` keeps each hold's record (and so makes retries idempotent and conflicts
    visible); the ``adapter`` moves tickets in the POS. Each call validates its arguments
    (raising :class:`~tevo_hold.errors.InvalidRequest`), then returns an :class:`Outcome`, whose
    ``replayed`` is True when the call repeated an earlier one and changed nothing.

    Concurrency: a hold or invoice first takes a lease on its ``global_id`` in the ledger (one
    atomic script), so of identical requests arriving together one does the work and the others
    answer :class:`~tevo_hold.errors.RequestInProgress` or replay its result. A lease whose holder
    died lapses after ``lease`` seconds and a retry takes over; adapters are idempotent per
    ``global_id``, so taking over never moves tickets twice.

    Round trips: with the reference :class:`RedisInventoryAdapter` on the ledger's own Redis
    (not a cluster), a hold is one script that checks and writes both the record and the stock,
    an invoice two, a release two. Otherwise (``fuse=False``, a cluster, another adapter) each
    step is its own call: three for a hold or an invoice.
    """

    def __init__(
        self,
        ledger: Ledger,
        adapter: PosAdapter,
        *,
        hold_ttl: float = 900,
        lease: float = 10,
        fuse: bool = True,
    ) -> None:
        if hold_ttl <= 0 or lease <= 0:
            raise errors.ConfigurationError("hold_ttl and lease must be positive (seconds)")
        self.ledger = ledger
        self.adapter = adapter
        self.hold_ttl = hold_ttl
        self.lease = lease
        # The reference inventory in the ledger's own Redis checks and writes both in one script.
        self._fused = (
            adapter
            if fuse and isinstance(adapter, RedisInventoryAdapter) and adapter.fuses_with(ledger)
            else None
        )

    def hold(self, *, remote_id: str, quantity: int, global_id: str) -> Outcome:
        """Hold ``quantity`` tickets of listing ``remote_id`` for ``global_id``, for ``hold_ttl``.

        Raises InvalidRequest, ListingNotFound, InsufficientQuantity, GlobalIdConflict,
        RequestInProgress, and what the adapter raises (PosError, Unavailable, PosTimeout).
        A failed hold leaves no record: a retry tries again.
        """
        remote_id = check_id("remote_id", remote_id)
        quantity = check_quantity(quantity)
        global_id = check_id("global_id", global_id)
        if self._fused is not None:
            done = self._fused.hold_recorded(
                self.ledger,
                global_id=global_id,
                remote_id=remote_id,
                quantity=quantity,
                ttl=self.hold_ttl,
            )
            return Outcome(done.hold.as_held(), replayed=not done.changed)
        token = uuid.uuid4().hex
        claim = self.ledger.claim_hold(
            global_id, remote_id, quantity, ttl=self.hold_ttl, lease=self.lease, token=token
        )
        if not claim.changed:
            return Outcome(claim.hold.as_held(), replayed=True)
        try:
            self.adapter.hold(
                global_id=global_id,
                remote_id=remote_id,
                quantity=quantity,
                expires_at=claim.hold.expires_at,
            )
        except BaseException:
            # If even this fails, the lease lapses and a retry takes the claim over.
            with contextlib.suppress(errors.Unavailable):
                self.ledger.abort_hold(global_id, token)
            raise
        return Outcome(self.ledger.finish_hold(global_id, token).hold.as_held())

    def release(self, *, global_id: str) -> Outcome:
        """Give back the tickets of ``global_id``'s hold.

        The hold becomes ``released``, or ``expired`` if it had lapsed. Repeating a release is
        harmless (the POS is asked again, and adapters are idempotent). Raises InvalidRequest,
        HoldNotFound, HoldAlreadyInvoiced, RequestInProgress, and what the adapter raises.
        """
        global_id = check_id("global_id", global_id)
        claim = self.ledger.release(global_id)
        hold = claim.hold
        self.adapter.release(global_id=global_id, remote_id=hold.remote_id, quantity=hold.quantity)
        return Outcome(hold, replayed=not claim.changed)

    def invoice(self, *, global_id: str, tevo_order_id: int | str) -> Outcome:
        """Sell ``global_id``'s held tickets to TEvo under order ``tevo_order_id``.

        A lapsed hold is sold if the POS still has the tickets; otherwise HoldExpired. Raises
        InvalidRequest, HoldNotFound, HoldReleased, OrderIdConflict, RequestInProgress, HoldExpired,
        and what the adapter raises; after a failure the hold is as it was and a retry tries again.
        """
        global_id = check_id("global_id", global_id)
        tevo_order_id = check_order_id(tevo_order_id)
        token = uuid.uuid4().hex
        claim = self.ledger.claim_invoice(global_id, tevo_order_id, lease=self.lease, token=token)
        if not claim.changed:
            return Outcome(claim.hold, replayed=True)
        hold = claim.hold
        if self._fused is not None:
            try:
                return Outcome(
                    self._fused.settle_recorded(self.ledger, hold=hold, token=token).hold
                )
            except errors.Unavailable:
                # Whether the settle ran is unknown; the abort is a no-op if it did.
                with contextlib.suppress(errors.Unavailable):
                    self.ledger.abort_invoice(global_id, token, lapsed=False)
                raise
        try:
            self.adapter.invoice(
                global_id=global_id,
                remote_id=hold.remote_id,
                quantity=hold.quantity,
                tevo_order_id=tevo_order_id,
            )
        except errors.InsufficientQuantity as exc:
            self.ledger.abort_invoice(global_id, token, lapsed=True)
            raise errors.HoldExpired(
                f"The hold {global_id!r} lapsed and its tickets are no longer available."
            ) from exc
        except BaseException:
            with contextlib.suppress(errors.Unavailable):
                self.ledger.abort_invoice(global_id, token, lapsed=False)
            raise
        return Outcome(self.ledger.finish_invoice(global_id, token).hold)

    def get(self, *, global_id: str) -> Hold:
        """The hold of ``global_id`` as it stands now. Raises InvalidRequest, HoldNotFound."""
        return self.ledger.get(check_id("global_id", global_id))

    def close(self) -> None:
        """Close the adapter."""
        self.adapter.close()


def build_service(
    settings: Settings, *, client: redis.Redis | None = None, fuse: bool = True
) -> HoldService:
    """The service ``settings`` describe, on the reference adapter, sharing one Redis client.

    Pass ``client`` to use a client of your own (a fakeredis one in tests, say); ``fuse`` as for
    :class:`HoldService`.
    """
    client = client if client is not None else connect(settings)
    keys = KeySpace(settings.key_prefix)
    return HoldService(
        Ledger(client, keys=keys, retention=settings.retention),
        RedisInventoryAdapter(client, keys=keys, retention=settings.retention),
        hold_ttl=settings.hold_ttl,
        lease=settings.lease,
        fuse=fuse,
    )
