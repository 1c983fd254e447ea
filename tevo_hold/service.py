"""The core: :class:`HoldService`, TEvo's hold / release / invoice, independent of HTTP."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import signal
import threading
from collections.abc import Iterator

from . import errors, metrics
from ._redis import RedisClient, fail_fast
from ._text import printable
from ._unique import unique_hex
from .adapters.base import PosAdapter
from .adapters.redis_inventory import RedisInventoryAdapter
from .connection import connect
from .keys import KeySpace
from .ledger import Claim, Ledger
from .models import Hold, HoldStatus, Outcome
from .settings import Settings, seconds
from .validation import check_id, check_order_id, check_quantity

__all__ = [
    "ADAPTER_ERRORS",
    "HoldService",
    "adapter_call",
    "build_adapter",
    "build_service",
    "describe_error",
]

log = logging.getLogger("tevo_hold")


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

    Redis down: each call answers :class:`~tevo_hold.errors.Unavailable` after at most one
    failed Redis call (see :func:`~tevo_hold._redis.fail_fast`); what it leaves is what the
    lease and the worker complete, and a retry completes or replays it.

    Round trips: with the reference :class:`RedisInventoryAdapter` on the ledger's own Redis
    (not a cluster), each call is one script that checks and writes both the record and the
    stock. Otherwise (``fuse=False``, a cluster, another adapter) each step is its own call:
    three for a hold or an invoice, two for a release.
    """

    def __init__(
        self,
        ledger: Ledger,
        adapter: PosAdapter,
        *,
        hold_ttl: float = 900,
        lease: float = 10,
        fuse: bool = True,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
    ) -> None:
        self.ledger = ledger
        self.adapter = adapter
        self.hold_ttl = _duration("hold_ttl", hold_ttl)
        self.lease = _duration("lease", lease)
        self.retry_base = _duration("retry_base", retry_base)
        self.retry_cap = _duration("retry_cap", retry_cap)
        #: Redis clients to close with the service (those build_service made).
        self.owned_clients: list[RedisClient] = []
        # The reference inventory in the ledger's own Redis checks and writes both in one script.
        self._fused = (
            adapter
            if fuse and isinstance(adapter, RedisInventoryAdapter) and adapter.fuses_with(ledger)
            else None
        )
        # The reference inventory step by step: told the hold's deadline, its sale says whether
        # the hold lapsed there before it came (see settle_invoice). Not a subclass that overrides
        # invoice: its own takes the PosAdapter arguments only, as the contract says.
        self._inventory = (
            adapter
            if isinstance(adapter, RedisInventoryAdapter)
            and type(adapter).invoice is RedisInventoryAdapter.invoice
            else None
        )

    @fail_fast()
    @metrics.counted(metrics.HOLDS)
    def hold(self, *, remote_id: str, quantity: int, global_id: str, actor: str = "api") -> Outcome:
        """Hold ``quantity`` tickets of listing ``remote_id`` for ``global_id``, for ``hold_ttl``.

        Raises InvalidRequest, ListingNotFound, InsufficientQuantity, GlobalIdConflict,
        RequestInProgress, and what the adapter raises (PosError, Unavailable, PosTimeout;
        InternalError for anything else, see :func:`adapter_call`). A refused hold leaves no
        record: a retry tries again. A hold whose POS call has no known outcome (PosTimeout, a
        PosError whose ``outcome_unknown`` is set, an unexpected error, a POS that answered
        after the lease ended) is released in the POS by the worker a lease after (once the POS
        call has landed, or never will), unless a retry or a release completes it first.
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
                actor=actor,
            )
            return Outcome(done.hold.as_held(), replayed=not done.changed)
        token = unique_hex()
        claim = self.ledger.claim_hold(
            global_id,
            remote_id,
            quantity,
            ttl=self.hold_ttl,
            lease=self.lease,
            token=token,
            actor=actor,
        )
        if not claim.changed:
            return Outcome(claim.hold.as_held(), replayed=True)
        try:
            with adapter_call("hold"):
                self.adapter.hold(
                    global_id=global_id,
                    remote_id=remote_id,
                    quantity=quantity,
                    expires_at=claim.hold.expires_at,
                )
        except BaseException as exc:  # an interrupt too: the outcome is unknown
            if isinstance(exc, _REFUSED) and not getattr(exc, "outcome_unknown", False):
                # Nothing is held in the POS. If even this fails, the compensation scheduled
                # with the claim releases nothing, harmlessly.
                with contextlib.suppress(errors.Unavailable):
                    self.ledger.abort_hold(
                        global_id, token, describe_error(exc), lease=self.lease, actor=actor
                    )
                raise exc from None
            with contextlib.suppress(errors.Unavailable):
                detail = describe_error(exc)
                if not self.ledger.unknown_hold(
                    global_id, token, detail, lease=self.lease, actor=actor
                ):
                    self._lost(global_id, remote_id, quantity, detail, actor)
            raise
        track = not self.adapter.lapses_on_its_own
        finished = self.ledger.finish_hold(global_id, token, track_lapse=track, actor=actor)
        if finished is None:
            detail = (
                f"The POS answered the hold after its lease of {self.lease:g} s had ended; "
                "the hold is released again."
            )
            with contextlib.suppress(errors.Unavailable):
                self._lost(global_id, remote_id, quantity, detail, actor)
            raise errors.PosTimeout(detail)
        return Outcome(finished.hold.as_held())

    def _lost(self, global_id: str, remote_id: str, quantity: int, detail: str, actor: str) -> None:
        """The POS call of a hold ended after its claim's lease, and the hold was compensated or
        released meanwhile: have the worker release what the call held in the POS once more."""
        log.error(
            "hold %r: the POS call ended after the lease (%g s): raise TEVO_HOLD_LEASE above the "
            "POS's slowest hold call (%s)",
            global_id,
            self.lease,
            printable(detail),  # the POS's own words may be in it
        )
        self.ledger.lost_hold(
            global_id, remote_id, quantity, ttl=self.hold_ttl, detail=detail, actor=actor
        )

    @fail_fast()
    @metrics.counted(metrics.RELEASES)
    def release(self, *, global_id: str, actor: str = "api") -> Outcome:
        """Give back the tickets of ``global_id``'s hold.

        The hold becomes ``released``, or ``expired`` if it had lapsed. Repeating a release is
        harmless (the POS is asked again, and adapters are idempotent); should the POS call fail,
        the worker makes it later. A hold whose POS call had no known outcome, with no request at
        work on it, is released the same way. Raises InvalidRequest, HoldNotFound,
        HoldAlreadyInvoiced, RequestInProgress (a hold or invoice call is running, or the worker
        is releasing the hold), and, once the hold is released here, PosError, PosTimeout or
        Unavailable for a POS release that failed (the adapter's ListingNotFound or
        InsufficientQuantity is raised as PosError, anything else it raises as InternalError).
        """
        global_id = check_id("global_id", global_id)
        if self._fused is not None:
            fused = self._fused.release_recorded(
                self.ledger, global_id=global_id, lease=self.lease, actor=actor
            )
            if fused is not None:
                return self._released(fused)
        track = not self.adapter.lapses_on_its_own
        claim = self.ledger.release(global_id, lease=self.lease, track_release=track, actor=actor)
        outcome = self._released(claim)
        hold = claim.hold
        try:
            with adapter_call("release"):
                self.adapter.release(
                    global_id=global_id, remote_id=hold.remote_id, quantity=hold.quantity
                )
        except _REFUSALS as exc:
            # The POS refused the release with an answer that means something else for a hold
            # (insufficient_quantity, say): the hold is released here all the same, and the
            # caller is told the POS failed to take the tickets back, as documented.
            later = " and the worker asks the POS again" if track else ""
            raise errors.PosError(
                f"The POS refused to release the hold {global_id!r} ({exc.code}: {exc.detail}); "
                f"it is released here{later}."
            ) from exc
        if track:
            self.ledger.released_in_pos(global_id, since=claim.at, actor=actor)
        return outcome

    @staticmethod
    def _released(claim: Claim) -> Outcome:
        # A lapse the worker released in the POS first was counted then (seen_by="worker").
        if claim.changed and claim.hold.status is HoldStatus.EXPIRED and not claim.pos_released:
            metrics.LAPSED.labels("release").inc()
        return Outcome(claim.hold, replayed=not claim.changed)

    @fail_fast()
    @metrics.counted(metrics.INVOICES)
    def invoice(self, *, global_id: str, tevo_order_id: int | str, actor: str = "api") -> Outcome:
        """Sell ``global_id``'s held tickets to TEvo under order ``tevo_order_id``.

        ``tevo_order_id`` 4711 and "4711" name the same order. A lapsed hold is sold if the POS
        still has the tickets; otherwise HoldExpired, and the hold is as it was. Any other failure
        of the POS is never dropped: the hold becomes ``invoice_failed``, the worker retries it
        with backoff, and a retry of this call tries the POS again; the error is raised. That
        includes a POS that has no tickets for a hold that had not lapsed, or for an invoice
        that failed before, and a POS that knows no such listing (PosError: the buyer has paid,
        and the seller must resolve it). Raises InvalidRequest, HoldNotFound, HoldReleased,
        OrderIdConflict, RequestInProgress, HoldExpired, and what the adapter raises (PosError,
        Unavailable, PosTimeout; InternalError for anything else, see :func:`adapter_call`).
        """
        global_id = check_id("global_id", global_id)
        tevo_order_id = check_order_id(tevo_order_id)
        token = unique_hex()
        if self._fused is not None:
            try:
                fused = self._fused.invoice_recorded(
                    self.ledger,
                    global_id=global_id,
                    tevo_order_id=tevo_order_id,
                    token=token,
                    lease=self.lease,
                    retry_base=self.retry_base,
                    retry_cap=self.retry_cap,
                    actor=actor,
                )
            except (errors.ListingNotFound, errors.InsufficientQuantity) as exc:
                # the sale failed (the listing is gone, or the tickets of an invoice that failed
                # before): invoice_failed, retried
                metrics.INVOICE_FAILURES.labels("api").inc()
                raise _sale_refused(global_id, exc) from exc
            if fused is not None:
                return Outcome(fused.hold, replayed=not fused.changed)
        claim = self.ledger.claim_invoice(
            global_id, tevo_order_id, lease=self.lease, token=token, actor=actor
        )
        if not claim.changed:
            return Outcome(claim.hold, replayed=True)
        try:
            return Outcome(self.settle_invoice(claim, token, actor=actor))
        except errors.HoldExpired:
            raise
        except BaseException:
            metrics.INVOICE_FAILURES.labels("api").inc()
            raise

    def settle_invoice(self, claim: Claim, token: str, *, actor: str = "api") -> Hold:
        """Sell the hold's tickets in the POS for the invoice that ``token`` claimed (``claim``:
        TEvo's invoice, or the worker's retry of one that is due), and record the outcome.

        Returns the hold invoiced. A failed sale is recorded ``invoice_failed`` (retried with
        backoff) and raised: PosError for a POS that refused it (the listing or the tickets
        gone), else what the adapter raised. But the first invoice of a lapsed hold whose tickets
        are gone is given back lapsed, and HoldExpired raised: whoever makes that attempt, TEvo
        is answered ``410`` (its retry, after a worker made it, too). RequestInProgress or
        HoldNotFound when the claim was taken over meanwhile (its lease ended).
        """
        hold = claim.hold
        gid = hold.global_id
        retry_in = self.retry_delay(hold.invoice_attempts + 1)
        if self._fused is not None:
            # Should this call fail (Redis unreachable), the claim's lease ends and the invoice
            # is due for the worker then; a no-op if the settle did run.
            try:
                return self._fused.settle_recorded(
                    self.ledger, hold=hold, token=token, retry_in=retry_in, actor=actor
                ).hold
            except (errors.ListingNotFound, errors.InsufficientQuantity) as exc:  # kept, retried
                raise _sale_refused(gid, exc) from exc
        assert hold.tevo_order_id is not None
        sell = self.adapter.invoice
        if self._inventory is not None:
            sell = functools.partial(self._inventory.invoice, expires_at=hold.expires_at)
        try:
            with adapter_call("invoice"):
                sell(
                    global_id=gid,
                    remote_id=hold.remote_id,
                    quantity=hold.quantity,
                    tevo_order_id=hold.tevo_order_id,
                )
        except (errors.InsufficientQuantity, errors.HoldExpired) as exc:
            # The hold's tickets are gone in the POS (an adapter may say so with HoldExpired:
            # the hold lapsed there). The hold lapsed if the invoice came after its deadline (was
            # claimed after it: by TEvo, or by the worker retrying one whose request died before
            # its POS call, as TEvo's retry would have); or if the reference inventory says its
            # sale did, and others took the tickets (an invoice claimed just before the deadline
            # whose sale came just after it, once another hold had them): the sale cannot be
            # made, and TEvo is told at once rather than the invoice being kept and retried
            # while another buyer owns the tickets. (Another adapter's HoldExpired proves
            # nothing of the kind: it means what InsufficientQuantity does.)
            lapsed = claim.at >= int(hold.expires_at.timestamp() * 1000) or (
                self._inventory is not None and isinstance(exc, errors.HoldExpired)
            )
            if hold.invoice_attempts == 0 and lapsed:
                # a first invoice of a lapsed hold whose tickets are gone: nobody bought them
                # yet, and the hold is given back lapsed (TEvo is told at once, 410)
                return self._give_back_lapsed(gid, token, exc, actor)
            # The POS lost the tickets of a live hold, or of a sale already answered as kept
            # and retried: a failed sale like any other, never dropped.
            self._fail_invoice(gid, token, exc, retry_in, actor)
            raise _sale_refused(gid, exc) from exc
        except errors.ListingNotFound as exc:
            # Kept and retried like any failed sale (the listing may come back): TEvo is told
            # the POS failed (502, retry), never that the listing is gone for good.
            self._fail_invoice(gid, token, exc, retry_in, actor)
            raise _sale_refused(gid, exc) from exc
        except BaseException as exc:  # an interrupt too: the sale's outcome is unknown
            self._fail_invoice(gid, token, exc, retry_in, actor)
            raise
        return self.ledger.finish_invoice(gid, token, hold.tevo_order_id, actor=actor).hold

    def _give_back_lapsed(
        self, gid: str, token: str, exc: errors.TevoHoldError, actor: str
    ) -> Hold:
        """The POS has no tickets for the first invoice of a lapsed hold (``exc``): give the
        hold back lapsed and raise HoldExpired. Unless the claim was taken over meanwhile (the
        POS answered after the lease), when the invoice is the other attempt's: TEvo is told
        what that attempt made of it, never a lapse that the ledger does not record (it keeps
        the invoice and sells it when the POS can)."""
        aborted = self.ledger.abort_invoice(
            gid, token, lapsed=True, detail=describe_error(exc), actor=actor
        )  # RequestInProgress while the other attempt runs
        hold = aborted.hold
        if aborted.changed or hold.status is HoldStatus.EXPIRED:  # given back lapsed
            raise errors.HoldExpired(
                f"The hold {gid!r} lapsed and its tickets are no longer available."
            ) from exc
        if hold.status is HoldStatus.INVOICED:  # the other attempt sold them
            return hold
        raise _sale_refused(gid, exc) from exc  # invoice_failed: kept and retried

    def _fail_invoice(
        self, gid: str, token: str, exc: BaseException, retry_in: float, actor: str
    ) -> None:
        """Record the claimed invoice failed: the buyer has paid, so it is retried until the POS
        takes it. If even this write fails, the claim's lease ends and the invoice is due for
        the worker then."""
        with contextlib.suppress(errors.Unavailable):
            self.ledger.fail_invoice(
                gid, token, describe_error(exc), retry_in=retry_in, actor=actor
            )

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...) of a failed POS call:
        ``retry_base`` doubled per attempt, at most ``retry_cap``, however many attempts (the
        exponent is bounded: 2 ** 1024 is past any float, and an invoice the POS fails every few
        minutes for days reaches that many)."""
        return float(min(self.retry_cap, self.retry_base * 2.0 ** min(max(attempt - 1, 0), 64)))

    @fail_fast()
    def get(self, *, global_id: str, history: bool = False) -> Hold:
        """The hold of ``global_id`` as it stands now, with its audit trail if ``history``.

        Raises InvalidRequest, HoldNotFound.
        """
        return self.ledger.get(check_id("global_id", global_id), history=history)

    def close(self) -> None:
        """Close the adapter, and the Redis clients this service made (see build_service)."""
        self.adapter.close()
        for client in self.owned_clients:
            client.close()

    def __enter__(self) -> HoldService:
        """``with build_service(settings) as service:`` closes it (:meth:`close`) at the end."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: What an adapter signals a failure with (PosAdapter's contract). Anything else it raises,
#: another TevoHoldError included, is an unexpected error: see :func:`adapter_call`.
ADAPTER_ERRORS: tuple[type[errors.TevoHoldError], ...] = (
    errors.ListingNotFound,
    errors.InsufficientQuantity,
    errors.PosError,
    errors.Unavailable,
    errors.PosTimeout,
)

#: Besides ADAPTER_ERRORS, what each call of the adapter may raise: GlobalIdConflict from a hold
#: or a release (the reference inventory's, for a global_id that holds another quantity there),
#: HoldExpired from an invoice (the hold lapsed in the POS and its tickets are gone, as
#: InsufficientQuantity says).
_ALSO: dict[str, tuple[type[errors.TevoHoldError], ...]] = {
    "hold": (errors.GlobalIdConflict,),
    "release": (errors.GlobalIdConflict,),
    "invoice": (errors.HoldExpired,),
}

#: The adapter's refusals that name the listing or the global_id: on a hold, nothing was held;
#: on a release, the POS failed to take the tickets back.
_REFUSALS = (errors.ListingNotFound, errors.InsufficientQuantity, errors.GlobalIdConflict)

#: The adapter's answers to a hold that mean nothing was held in the POS.
_REFUSED = (*_REFUSALS, errors.PosError, errors.Unavailable)


@contextlib.contextmanager
def adapter_call(call: str) -> Iterator[None]:
    """Around one call of the POS adapter (``hold``, ``release`` or ``invoice``): time and count
    it, and turn what the adapter must not raise into :class:`~tevo_hold.errors.InternalError`.

    The adapter's contract lets it fail with ADAPTER_ERRORS only; anything else becomes
    ``500 internal_error`` and is handled as an unexpected error, whose outcome in the POS is
    unknown (a hold is released later, an invoice kept and retried), with its traceback logged:

    - another TevoHoldError (HoldExpired, InvalidRequest, RateLimited, RequestInProgress from an
      adapter that calls back into the service...) would otherwise reach TEvo as its own answer,
      a 410 or a 409 for a call whose outcome is unknown (a 410 for an invoice that the worker
      then sells);
    - any BaseException (SystemExit, GeneratorExit, KeyboardInterrupt): raised from an adapter,
      it would end the process (a gunicorn worker, and with SystemExit(3) the whole server;
      ``tevo-hold worker`` on each retry of the item).

    Except a KeyboardInterrupt that may be a real Ctrl-C: one raised in the main thread while
    Python's own SIGINT handler is installed (a script or a CLI command calling the service) is
    raised as it is, after the caller recorded the call's outcome as unknown, so the interrupt
    still stops the program. Where tevo-hold runs the calls, none comes from a signal: the
    server's requests run in worker threads (signals reach the main thread only), and
    ``tevo-hold worker`` turns SIGINT into its stop event, so the item in hand is finished.
    A SystemExit is always the adapter's: a host whose signal handler raises one during the
    call (gunicorn's sync worker on SIGQUIT) answers the request 500 and stops after it.
    """
    allowed = ADAPTER_ERRORS + _ALSO.get(call, ())
    with metrics.pos_call(call):
        try:
            yield
        except allowed:
            raise
        except BaseException as exc:
            if _interrupted(exc):
                raise
            log.error(
                "the POS adapter's %s raised %s, which an adapter must not raise "
                "(see PosAdapter): answered 500 internal_error, the outcome is unknown",
                call,
                type(exc).__name__,
                exc_info=exc,
            )
            # the answer names no type nor message (the log does): it is TEvo's to read
            raise errors.InternalError(
                f"The POS {call} failed unexpectedly; it was logged."
            ) from exc


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` may be the user's Ctrl-C: a KeyboardInterrupt where Python raises one for
    SIGINT (the main thread, with its default handler installed)."""
    return (
        isinstance(exc, KeyboardInterrupt)
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def _sale_refused(global_id: str, exc: errors.TevoHoldError) -> errors.PosError:
    """The error of a sale the POS refused (its listing or the tickets gone), when the invoice
    is kept (``invoice_failed``, retried): the seller's to resolve, as any failed sale."""
    return errors.PosError(
        f"The POS refused the sale of the hold {global_id!r} ({exc.code}: {exc.detail}): the "
        "invoice is kept and retried; the seller must resolve it."
    )


def _duration(name: str, value: float) -> float:
    """A duration given to HoldService, checked as the setting of that name is (finite, from a
    millisecond to MAX_SECONDS): an infinite, NaN or huge one was taken, and then failed each
    call with an OverflowError or ValueError, some after their tickets were held in the POS."""
    try:
        return seconds(value)
    except (TypeError, ValueError) as exc:
        raise errors.ConfigurationError(f"HoldService {name}={value!r}: {exc}") from None


def describe_error(exc: BaseException) -> str:
    """An error as the audit trail records it: its code and its message, which tevo-hold writes
    for TEvo to read. Another exception (an adapter's bug, a driver's error) is named by its type
    alone: its message may carry the POS's address or data, which only the log gets."""
    if isinstance(exc, errors.TevoHoldError):
        return f"{exc.code}: {exc.detail}"
    return f"{type(exc).__name__} (see the log)"


def build_service(
    settings: Settings, *, client: RedisClient | None = None, fuse: bool = True
) -> HoldService:
    """The service ``settings`` describe (the adapter of ``TEVO_HOLD_ADAPTER``), on one client.

    Pass ``client`` to use a Redis client of your own (a fakeredis one in tests, say); the
    service closes only a client it made. ``fuse`` as for :class:`HoldService`.
    """
    owned = client is None
    client = client if client is not None else connect(settings)
    keys = KeySpace(settings.key_prefix)
    service = HoldService(
        Ledger(client, keys=keys, retention=settings.retention),
        build_adapter(settings, client=client, keys=keys),
        hold_ttl=settings.hold_ttl,
        lease=settings.lease,
        fuse=fuse,
        retry_base=settings.retry_base,
        retry_cap=settings.retry_cap,
    )
    if owned:
        service.owned_clients.append(client)
    return service


def build_adapter(settings: Settings, *, client: RedisClient, keys: KeySpace) -> PosAdapter:
    """The POS adapter ``TEVO_HOLD_ADAPTER`` names.

    ``reference``: :class:`RedisInventoryAdapter` on ``client``. ``http``: :class:`HttpPosAdapter`
    from the ``TEVO_HOLD_POS_*`` settings. ``package.module:Class``: that class, built with
    ``Class.from_settings(settings)`` if it has that classmethod, else ``Class()``.

    Raises ConfigurationError naming the setting for a class that cannot be imported, is no
    PosAdapter, lacks some of its methods, needs arguments and has no from_settings, or whose
    building raises (with the error it raised).
    """
    name = settings.adapter
    if name == "reference":
        return RedisInventoryAdapter(client, keys=keys, retention=settings.retention)
    if name == "http":
        from .adapters.http import HttpPosAdapter

        assert settings.pos_url is not None  # Settings.check() makes sure
        return HttpPosAdapter(
            settings.pos_url,
            api_key=settings.pos_api_key,
            auth_header=settings.pos_auth_header,
            ca_file=settings.pos_ca_file,
            paths={
                "hold": settings.pos_hold_path,
                "release": settings.pos_release_path,
                "invoice": settings.pos_invoice_path,
            },
            timeout=settings.pos_timeout,
            budget=settings.pos_budget,
            retries=settings.pos_retries,
            health_path=settings.pos_health_path,
        )
    module_name, sep, class_name = name.partition(":")
    if not sep:
        module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise errors.ConfigurationError(
            f"TEVO_HOLD_ADAPTER={name!r}: expected reference, http, or an importable "
            f"package.module:Class ({type(exc).__name__}: {exc})"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, PosAdapter)):
        raise errors.ConfigurationError(
            f"TEVO_HOLD_ADAPTER={name!r} is not a subclass of tevo_hold.PosAdapter"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise errors.ConfigurationError(
            f"TEVO_HOLD_ADAPTER={name!r}: the class does not define {', '.join(missing)}, "
            "which every tevo_hold.PosAdapter must (hold, release and invoice)"
        )
    factory = getattr(cls, "from_settings", None)
    if not callable(factory):
        import inspect

        try:
            inspect.signature(cls).bind()
        except TypeError as exc:
            raise errors.ConfigurationError(
                f"TEVO_HOLD_ADAPTER={name!r}: the class needs arguments ({exc}); give it a "
                "classmethod from_settings(settings) that builds it"
            ) from None
        except ValueError:  # no signature to read: calling it tells
            pass
    built = f"{class_name}.from_settings(settings)" if callable(factory) else f"{class_name}()"
    try:
        adapter: PosAdapter = factory(settings) if callable(factory) else cls()
    except errors.ConfigurationError:
        raise  # the adapter's own, naming its setting
    except Exception as exc:
        # The vendor's code failed (an os.environ[...] of a variable not set, say): one line
        # with its error, not a traceback from the command or a server that fails to boot.
        raise errors.ConfigurationError(
            f"TEVO_HOLD_ADAPTER={name!r}: {built} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return adapter
