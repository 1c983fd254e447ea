"""The worker: keeps the POS in step with the ledger (``tevo-hold worker``).

The ledger schedules every piece of work that a POS call must complete in a due set (see
``lua/_ledger.lua``), in the same atomic step as the state that needs it:

- a hold that lapsed is released in the POS at its deadline (for adapters whose holds do not
  lapse on their own), and so is a released hold whose own POS release may not have happened;
- a hold whose POS call had no known outcome (a timeout, or a request that died half-way) is
  released in the POS once its lease ends (a full lease after a timeout: the POS may still be
  making the hold until then), unless a retry of the hold completed it first;
- a failed invoice is retried with backoff until the POS takes it, as the API sells it (see
  ``HoldService.settle_invoice``): the first invoice of a lapsed hold whose tickets are gone
  (its request died before its POS call) is given back lapsed, as TEvo's retry would have it.

Any number of workers may run at once, on any hosts: each item is claimed atomically for a lease,
so the POS sees one call per item (at least once: a worker that dies mid-call leaves its item to
be claimed again when the lease ends, and adapters are idempotent per global_id). A worker makes
one POS call at a time: more workers drain a backlog faster.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from . import errors, metrics
from ._text import printable
from .ledger import DueItem
from .service import HoldService, adapter_call, describe_error

__all__ = ["Worker"]

log = logging.getLogger("tevo_hold.worker")

#: Seconds before the failure of one due item is logged again (with how often it failed since):
#: an item that fails every round (a due kind this version does not know, say) is retried each
#: round, but is not a traceback each time.
FAILURE_LOG_EVERY = 600.0


class Worker:
    """Claims due items from the ledger and makes their POS calls, one at a time.

    ``lease`` (seconds; the service's own, TEVO_HOLD_LEASE, when not given) bounds one POS call:
    an item claimed by a worker that then dies is due again after it, and another worker may
    call the POS for it again then, so keep it above the POS's slowest call. ``interval`` is how
    long to sleep when nothing is due; ``batch`` how many items to fetch per shard per round.
    """

    def __init__(
        self,
        service: HoldService,
        *,
        lease: float | None = None,
        interval: float = 0.25,
        batch: int = 100,
        name: str = "worker",
    ) -> None:
        self.service = service
        self.lease = service.lease if lease is None else lease
        self.interval = interval
        self.batch = batch
        self.name = name
        # The items whose work failed with an error of their own: when each was last logged,
        # and how often it failed since (see FAILURE_LOG_EVERY).
        self._failing: dict[DueItem, tuple[float, int]] = {}

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Process every item due now, or until ``stop`` is set (the item in hand is finished
        first); return how many needed a POS call.

        An item whose work fails with an error of its own (one the ledger refuses to claim, say:
        a due kind this version does not know) is logged and left due, and the others are done;
        Redis being unavailable, or a configuration it refuses, ends the round (raised).
        """
        done = 0
        # Past the items that keep failing: they stay due at the front of their shards, and as
        # many as a batch of them would hide every later item of the shard for good.
        for item in self.service.ledger.due_items(limit=self.batch, past=self._failing):
            if stop is not None and stop.is_set():
                break
            try:
                busy = self.process(item)
            except (errors.Unavailable, errors.ConfigurationError):
                raise  # every item's, not this one's
            except Exception as exc:
                self._failed(item, exc)
                continue
            if self._failing:
                self._failing.pop(item, None)
            if busy:
                done += 1
        return done

    def _failed(self, item: DueItem, exc: Exception) -> None:
        """Log the failure of ``item``: at once, then at most once per FAILURE_LOG_EVERY."""
        now = time.monotonic()
        logged, since = self._failing.get(item, (None, 0))
        if logged is not None and now - logged < FAILURE_LOG_EVERY:
            self._failing[item] = (logged, since + 1)
            return
        # Bounded: the items logged within two periods (one still failing is logged again
        # after one, so an older entry is an item gone from the due set).
        for stale in [
            k for k, (at, _) in self._failing.items() if now - at > 2 * FAILURE_LOG_EVERY
        ]:
            del self._failing[stale]
        self._failing[item] = (now, 0)
        log.error(
            "%s: %s of %r failed%s: %s; it stays due and is tried again (not logged again for "
            "%g s), the other items are done meanwhile",
            self.name,
            _WHAT.get(item.kind, f"due work of kind {item.kind!r}"),
            item.global_id,
            f" {since + 1} times since it was last logged" if since else "",
            printable(f"{type(exc).__name__}: {exc}"),  # Redis's or the POS's own words
            FAILURE_LOG_EVERY,
            exc_info=exc,
        )

    def run(self, stop: threading.Event) -> None:
        """Process items until ``stop`` is set; the item in hand is finished first.

        Nothing stops it but ``stop``: an item that fails is logged and left due while the others
        are done (see :meth:`run_once`); Redis being unreachable is logged and waited out, and so
        is any other error that ends a round (with its traceback: a bug, or a Redis that refuses
        a command).
        """
        log.info("%s started", self.name)
        while not stop.is_set():
            try:
                busy = self.run_once(stop)
            except errors.Unavailable as exc:
                log.warning("%s: %s; retrying", self.name, exc)
                busy = 0
                stop.wait(max(self.interval, 1.0))
            except Exception:
                log.exception("%s: a round failed; retrying", self.name)
                busy = 0
                stop.wait(max(self.interval, 1.0))
            if not busy:
                stop.wait(self.interval)
        log.info("%s stopped", self.name)

    def process(self, item: DueItem) -> bool:
        """Claim ``item`` and make its POS call. False if it was not due or needed no work."""
        ledger, adapter, actor = self.service.ledger, self.service.adapter, self.name
        token = uuid.uuid4().hex
        claim = ledger.claim_due(item, token, lease=self.lease, actor=actor)
        if claim is None:
            return False
        hold = claim.hold
        gid = hold.global_id
        try:
            if item.kind == "i":
                # The API's own sale, with its verdicts: a failure is recorded (retried with
                # backoff), and the first invoice of a lapsed hold whose tickets are gone is
                # given back lapsed, as TEvo's retry would have it, not retried for ever.
                self.service.settle_invoice(claim, token, actor=actor)
            else:
                with adapter_call("release"):
                    adapter.release(global_id=gid, remote_id=hold.remote_id, quantity=hold.quantity)
        except errors.HoldExpired:
            log.info(
                "%s: invoice retry of %r: the hold had lapsed and the POS has no tickets for its "
                "first invoice: given back lapsed (TEvo's retry is answered 410 hold_expired)",
                actor,
                gid,
            )
            return True
        except (errors.RequestInProgress, errors.HoldNotFound) as exc:  # from settle_invoice
            # The POS call outlived the lease, and another worker (or TEvo's retry) took the
            # item over meanwhile: the item is that one's now, and it calls the POS again
            # (adapters are idempotent per global_id), so nothing is lost.
            log.warning(
                "%s: %s of %r ended after its lease (%g s), and the item was taken over: %s; "
                "raise --lease above the POS's slowest call",
                actor,
                _WHAT[item.kind],
                gid,
                self.lease,
                exc,
            )
            return True
        except BaseException as exc:
            # adapter_call turned whatever the adapter must not raise (SystemExit included) into
            # InternalError, so that one bad item never ends the work; an interrupt that may be
            # the user's Ctrl-C is recorded as a failure like any other, then stops the worker.
            detail = describe_error(exc)
            log.warning(
                "%s: %s of %r failed: %s",
                actor,
                _WHAT[item.kind],
                gid,
                printable(detail),  # the POS's own words may be in it
                exc_info=not isinstance(exc, errors.TevoHoldError),
            )
            if item.kind == "i":  # settle_invoice recorded it failed: retried with backoff
                metrics.INVOICE_FAILURES.labels("worker").inc()
            else:
                ledger.retry_due(
                    item,
                    token,
                    detail,
                    retry_in=self.service.retry_delay(2),
                    retry_cap=self.service.retry_cap,
                    actor=actor,
                )
            if not isinstance(exc, Exception):
                raise
            return True
        if item.kind == "c":
            ledger.compensated(gid, token, actor=actor)
        elif item.kind == "l" and ledger.released_in_pos(gid, since=claim.at, actor=actor):
            # a lapse, unless a release call found the hold lapsed first (and counted it)
            metrics.LAPSED.labels("worker").inc()
        log.info("%s: %s of %r done", actor, _WHAT[item.kind], gid)
        return True


_WHAT = {"l": "POS release", "c": "compensating release", "i": "invoice retry"}
