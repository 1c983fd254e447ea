"""Calls that outlive their lease, and the work they leave: nothing is lost, and a late call undoes
nothing that came after it.

A request or a worker that stalls (a slow POS, a paused process) past its lease loses its claim:
another attempt takes the hold or the due item over. When the stalled call lands at last, it must
neither shorten the newer attempt's hold, nor drop work another worker now owns, nor mark done a
POS release that it may have made too early. And work owed to the POS (a release, a failed sale)
outlives any retention period, however long the POS or the worker is down.

Every test runs on fakeredis, a real redis-server and a Redis Cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tevo_hold import HoldService, Settings, build_service, errors
from tevo_hold.adapters.redis_inventory import RedisInventoryAdapter
from tevo_hold.connection import RedisClient
from tevo_hold.keys import KeySpace
from tevo_hold.ledger import DueItem, Ledger
from tevo_hold.models import HoldStatus
from tevo_hold.worker import Worker

from .recording_pos import RecordingPos

#: Long enough past a lease of LEASE seconds for it to have ended, whatever the machine's pace.
LEASE = 0.05
PAST_LEASE = 0.15


class Pos(RecordingPos):
    """A POS whose answers a test scripts: each operation's list of exceptions is raised, one per
    call, before the calls succeed; ``during`` runs inside a call (another attempt meanwhile)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[Exception]] = {"hold": [], "release": [], "invoice": []}
        self.during: dict[str, Callable[[], None]] = {}

    def _answer(self, operation: str, global_id: str) -> None:
        self.calls.append((operation, global_id))
        if operation in self.during:
            self.during.pop(operation)()
        if self.fail[operation]:
            raise self.fail[operation].pop(0)

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        self._answer("hold", global_id)

    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        self._answer("release", global_id)

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        self._answer("invoice", global_id)


def pos_service(client: RedisClient, pos: Pos, **options: Any) -> HoldService:
    """A service on ``client`` with ``pos`` as its adapter (the step-by-step path, and a POS
    whose holds do not lapse on their own: the worker releases lapsed holds there)."""
    retention = options.pop("retention", 3600.0)
    ledger = Ledger(client, keys=KeySpace("stale"), retention=retention)
    return HoldService(ledger, pos, **{"lease": LEASE, "retry_base": 0.01, **options})


def record_ttl_ms(service: HoldService, global_id: str) -> int:
    return int(service.ledger.client.pttl(service.ledger.keys.hold(global_id)[0]))


# -- holds -------------------------------------------------------------------------------------


def test_a_stalled_hold_attempt_never_moves_the_hold_s_deadline_back(
    make_service: Callable[..., HoldService],
) -> None:
    """Attempt A claims the hold and stalls past its lease and its (short) deadline; TEvo's
    retry B takes the claim over and holds until a later deadline. A's POS hold lands at last,
    with A's (earlier) deadline: the tickets must stay held until B's, which the ledger
    answered, or they would go back on sale while the ledger still says held (and the invoice
    would find them gone)."""
    service = make_service(hold_ttl=60, lease=LEASE)
    inventory = service.adapter
    assert isinstance(inventory, RedisInventoryAdapter)
    inventory.set_quantity("L", 1)
    a = service.ledger.claim_hold("g", "L", 1, ttl=LEASE, lease=LEASE, token="attempt-a")
    time.sleep(PAST_LEASE)  # past A's lease, and A's deadline: B's cannot be A's
    b = service.hold(remote_id="L", quantity=1, global_id="g").hold
    assert b.status is HoldStatus.HELD and b.expires_at > a.hold.expires_at

    inventory.hold(global_id="g", remote_id="L", quantity=1, expires_at=a.hold.expires_at)

    due = inventory.client.zscore(inventory.keys.listing("L")[2], "g")
    assert due == pytest.approx(b.expires_at.timestamp() * 1000, abs=1)
    assert inventory.stock("L").held == 1


class DeadlinePos(Pos):
    """A POS that keeps each hold call's expires_at."""

    def __init__(self) -> None:
        super().__init__()
        self.deadlines: list[datetime] = []

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        self.deadlines.append(expires_at)
        super().hold(
            global_id=global_id, remote_id=remote_id, quantity=quantity, expires_at=expires_at
        )


def test_a_retry_that_takes_over_a_timed_out_hold_sends_the_pos_the_same_hold(
    client: RedisClient,
) -> None:
    """The first POS hold times out (its outcome unknown) and TEvo's retry takes the claim over:
    the retry was sent with a new expires_at. A POS that checks an idempotency key's data (the
    global_id, as the guide says) refused it, and the hold was lost; one that kept the first
    deadline let the hold lapse before the one TEvo was told. The retry now sends, and answers,
    the first attempt's deadline."""
    pos = DeadlinePos()
    pos.fail["hold"].append(errors.PosTimeout("no answer"))
    service = pos_service(client, pos, hold_ttl=60)
    with pytest.raises(errors.PosTimeout):
        service.hold(remote_id="R", quantity=1, global_id="g")
    time.sleep(0.01)
    answered = service.hold(remote_id="R", quantity=1, global_id="g").hold
    assert answered.status is HoldStatus.HELD
    assert pos.deadlines == [answered.expires_at, answered.expires_at]
    assert service.get(global_id="g").expires_at == answered.expires_at


def test_a_compensation_that_outlived_its_lease_leaves_the_item_to_the_worker_that_took_it_over(
    client: RedisClient,
) -> None:
    """Worker 1's compensating release outlives its lease; worker 2 takes the item over (and
    dies, say). Worker 1's late confirmation must not drop the item worker 2 now owns: the
    compensation is still due, a worker makes it, and TEvo's retry of the hold then works."""
    pos = Pos()
    pos.fail["hold"].append(errors.PosTimeout("no answer"))
    service = pos_service(client, pos)
    with pytest.raises(errors.PosTimeout):
        service.hold(remote_id="R", quantity=1, global_id="g")
    ledger, item = service.ledger, DueItem("c", "g")
    wait_for_due(service, item)  # a lease after the timeout
    assert ledger.claim_due(item, "worker-1", lease=LEASE) is not None
    time.sleep(PAST_LEASE)
    assert ledger.claim_due(item, "worker-2", lease=LEASE) is not None

    ledger.compensated("g", "worker-1")  # worker 1's release returns, after its lease

    assert list(ledger.scheduled("c")) == ["g"]
    time.sleep(PAST_LEASE)  # worker 2 never comes back: its lease ends
    assert Worker(service, lease=5).run_once() == 1
    assert pos.calls[-1] == ("release", "g")
    assert list(ledger.scheduled("c")) == []
    assert service.hold(remote_id="R", quantity=1, global_id="g").hold.status is HoldStatus.HELD


@pytest.mark.parametrize("retry", ["refused", "held"])
@pytest.mark.parametrize("landing", ["answered", "unknown", "lost"])
def test_a_stalled_hold_that_lands_during_a_retry_is_the_retry_s_to_release_or_keep(
    client: RedisClient, landing: str, retry: str
) -> None:
    """Attempt A's POS hold outlives its lease; the worker compensates it (nothing in the POS
    yet) and forgets the hold; TEvo's retry B makes a fresh claim. A's call then lands in the
    POS while B's runs: answered (finish_hold finds B's claim), with no known outcome
    (unknown_hold), or after its claim was found gone (lost_hold). B's claim inherits what A
    held: if the POS refuses B, the hold is compensated (released in the POS), not forgotten,
    which left A's tickets held in the POS for good with nothing due to give them back; if the
    POS holds B, B owns them."""
    pos = Pos()
    service = pos_service(client, pos)
    ledger = service.ledger
    ledger.claim_hold("g", "R", 1, ttl=60, lease=LEASE, token="attempt-a")
    time.sleep(PAST_LEASE)  # A's POS call outlives its lease
    assert Worker(service, lease=5).run_once() == 1  # compensated: nothing in the POS yet
    with pytest.raises(errors.HoldNotFound):
        ledger.get("g")
    if landing == "lost":
        assert ledger.finish_hold("g", "attempt-a") is None  # A's hold lands: its claim is gone

    def a_lands() -> None:  # while B's POS call runs
        if landing == "answered":
            with pytest.raises(errors.RequestInProgress):
                ledger.finish_hold("g", "attempt-a")
        elif landing == "unknown":
            assert ledger.unknown_hold("g", "attempt-a", "pos_timeout: no answer", lease=LEASE)
        else:
            ledger.lost_hold("g", "R", 1, ttl=60, detail="answered late")

    pos.during["hold"] = a_lands
    if retry == "refused":
        pos.fail["hold"].append(errors.PosError("POS: 429"))
        with pytest.raises(errors.PosError):
            service.hold(remote_id="R", quantity=1, global_id="g")
        assert list(ledger.scheduled("c")) == ["g"]
        wait_for_due(service, DueItem("c", "g"))  # a lease after the refusal
        assert Worker(service, lease=5).run_once() == 1
        assert pos.calls[-1] == ("release", "g")
    else:
        assert service.hold(remote_id="R", quantity=1, global_id="g").hold.status is (
            HoldStatus.HELD
        )
        assert Worker(service, lease=5).run_once() == 0
        assert service.get(global_id="g").status is HoldStatus.HELD
    assert list(ledger.scheduled("c")) == []


def test_a_pos_release_that_began_before_a_late_hold_landed_does_not_confirm_the_release(
    client: RedisClient,
) -> None:
    """TEvo releases a hold whose POS call has outlived its lease. The POS release reaches the
    POS before the POS hold does (nothing to give back yet); then the hold lands, and the ledger
    asks for the release again (lost_hold). The first release's confirmation arrives last: it
    must not mark the release done, or the tickets stay held in the POS for good."""
    pos = Pos()
    service = pos_service(client, pos)
    ledger = service.ledger
    ledger.claim_hold("g", "R", 1, ttl=60, lease=LEASE, token="attempt-a")
    time.sleep(PAST_LEASE)
    # TEvo's release, then its POS call
    release = ledger.release("g", lease=LEASE, track_release=True)
    assert ledger.finish_hold("g", "attempt-a") is None  # the POS hold lands: its claim is lost
    ledger.lost_hold("g", "R", 1, ttl=60, detail="answered late")

    ledger.released_in_pos("g", since=release.at)  # the early POS release's confirmation

    assert list(ledger.scheduled("l")) == ["g"]
    time.sleep(PAST_LEASE)  # a claim after the lost hold, and a lease after the release
    assert Worker(service, lease=5).run_once() == 1
    assert pos.calls == [("release", "g")]
    assert list(ledger.scheduled("l")) == []
    trail = [e.event for e in ledger.get("g", history=True).events]
    assert trail[-2:] == ["hold_answered_late", "pos_released"]


def test_a_release_of_a_timed_out_hold_is_made_again_once_the_hold_may_have_landed(
    client: RedisClient,
) -> None:
    """TEvo releases a hold whose POS call timed out: that call may still land in the POS (within
    a lease), after the release's own POS call. That POS release confirms nothing (nor a
    repeated one), and the worker releases the hold again a lease after TEvo's release, when
    its release confirms; the compensation is no longer owed."""
    pos = Pos()
    pos.fail["hold"].append(errors.PosTimeout("no answer"))
    # a lease of 2 s: "not due yet" below must be seen within it, however slow the machine
    service = pos_service(client, pos, lease=2)
    with pytest.raises(errors.PosTimeout):
        service.hold(remote_id="R", quantity=1, global_id="g")
    assert service.release(global_id="g").hold.status is HoldStatus.RELEASED
    assert service.release(global_id="g").replayed
    assert pos.calls == [("hold", "g"), ("release", "g"), ("release", "g")]
    ledger, item = service.ledger, DueItem("l", "g")
    assert list(ledger.scheduled("l")) == ["g"] and list(ledger.scheduled("c")) == []
    assert 0 < due_in_ms(service, item) <= 2000
    worker = Worker(service, lease=5)
    assert worker.run_once() == 0  # the POS release owed is not due yet
    wait_for_due(service, item)
    assert worker.run_once() == 1
    assert pos.calls[-1] == ("release", "g")
    assert list(ledger.scheduled("l")) == []
    assert ledger.get("g", history=True).events[-1].event == "pos_released"


def test_a_release_owed_a_lease_after_the_release_outlives_a_shorter_retention(
    client: RedisClient,
) -> None:
    """The POS release owed on a released hold comes due a lease after the release (at once for
    a timed-out hold, whose POS hold may still land); a lapsed hold's record was kept only for
    the retention, so with a retention shorter than the lease it was gone when that release
    came due, and the worker found nothing to release: the late POS hold stayed."""
    pos = Pos()
    pos.fail["hold"].append(errors.PosTimeout("no answer"))
    service = pos_service(client, pos, lease=1, retention=0.3, hold_ttl=0.05)
    with pytest.raises(errors.PosTimeout):
        service.hold(remote_id="R", quantity=1, global_id="g")
    time.sleep(0.1)  # past the hold's deadline: the release finds it lapsed
    assert service.release(global_id="g").hold.status is HoldStatus.EXPIRED
    item = DueItem("l", "g")
    wait_for_due(service, item)
    assert Worker(service, lease=5).run_once() == 1
    assert pos.calls[-1] == ("release", "g")
    assert list(service.ledger.scheduled("l")) == []


def test_a_record_owing_a_pos_release_outlives_its_retention_until_the_release_is_made(
    client: RedisClient,
) -> None:
    """A POS whose holds do not lapse on their own is down for longer than the retention
    period. The hold's record, which the worker needs to release it there, must not expire
    meanwhile (the release would be dropped); once the release is made it expires as usual.
    It keeps a TTL all along (extended by each attempt), never none: a worker or server of an
    earlier version would finish the release and leave a record without one for good."""
    pos = Pos()
    # Each wait is well inside the retention, the three longer than it: with a retention of
    # 0.3 s and waits of 0.2 s, a machine that stalled 0.1 s let the record expire between
    # attempts, and the TTL read after an attempt came out short.
    service = pos_service(client, pos, retention=1.5, hold_ttl=0.05)
    service.hold(remote_id="R", quantity=1, global_id="g")
    time.sleep(PAST_LEASE)  # the hold lapses; the POS is down
    pos.fail["release"] += [errors.Unavailable("POS down")] * 3
    worker = Worker(service, lease=5)
    for _ in range(3):
        assert worker.run_once() == 1
        assert record_ttl_ms(service, "g") > 500  # the retry's wait and the retention, ahead
        time.sleep(0.6)  # 1.8 s in all: longer than the retention period
    wait_for_due(service, DueItem("l", "g"))

    assert worker.run_once() == 1  # the POS is back

    assert pos.calls.count(("release", "g")) == 4
    assert list(service.ledger.scheduled("l")) == []
    assert 0 < record_ttl_ms(service, "g") <= 1500
    assert service.get(global_id="g").status is HoldStatus.EXPIRED


def test_a_pos_release_that_keeps_failing_is_retried_with_backoff(client: RedisClient) -> None:
    """A POS that refuses releases (a wrong key, say) is asked again and again, for as long as
    it takes, but each wait twice the last, up to the cap: not every two seconds for good."""
    pos = Pos()
    pos.fail["release"] += [errors.PosError("POS: 403")] * 5
    service = pos_service(client, pos, retry_base=0.01, retry_cap=0.1)
    service.hold(remote_id="R", quantity=1, global_id="g")
    with pytest.raises(errors.PosError):
        service.release(global_id="g")
    assert record_ttl_ms(service, "g") > 0
    ledger, item = service.ledger, DueItem("l", "g")
    waits = []
    for _ in range(4):
        wait_for_due(service, item)
        assert Worker(service, lease=5).run_once() == 1
        failed = ledger.get("g", history=True).events[-1]
        assert failed.event == "pos_release_failed"
        due_at = client.zscore(ledger.keys.hold("g")[2], "lg")
        waits.append(round(due_at - failed.at.timestamp() * 1000))
    assert waits == [20, 40, 80, 100]  # retry_delay(2), doubled, then the cap
    assert pos.calls.count(("release", "g")) == 5


def due_in_ms(service: HoldService, item: DueItem) -> float:
    """How long until ``item`` is due, by the Redis server's clock."""
    client = service.ledger.client
    score = client.zscore(service.ledger.keys.hold(item.global_id)[2], item.kind + item.global_id)
    seconds, micros = client.time()
    return float(score) - (seconds * 1000 + micros / 1000)


def wait_for_due(service: HoldService, item: DueItem) -> None:
    time.sleep(max(due_in_ms(service, item), 0) / 1000 + 0.005)


# -- invoices ----------------------------------------------------------------------------------


def test_a_retried_invoice_that_the_pos_has_no_tickets_for_is_kept(client: RedisClient) -> None:
    """An invoice failed (TEvo was told it is kept and retried); the POS then answers that the
    tickets are gone. The sale must stay on the books as failed, for the seller to resolve,
    whoever retries it (TEvo, `tevo-hold invoices retry`, the worker); never dropped as a hold
    that lapsed."""
    pos = Pos()
    pos.fail["invoice"] += [errors.PosError("POS failed", outcome_unknown=True)]
    pos.fail["invoice"] += [errors.InsufficientQuantity("POS: 0 tickets", available=0)] * 2
    service = pos_service(client, pos)
    service.hold(remote_id="R", quantity=1, global_id="g")
    with pytest.raises(errors.PosError):
        service.invoice(global_id="g", tevo_order_id=7)

    with pytest.raises(errors.PosError, match="kept and retried"):
        service.invoice(global_id="g", tevo_order_id=7, actor="cli")

    hold = service.get(global_id="g")
    assert (hold.status, hold.tevo_order_id, hold.invoice_attempts) == (
        HoldStatus.INVOICE_FAILED,
        7,
        2,
    )
    assert list(service.ledger.scheduled("i")) == ["g"]
    time.sleep(0.1)  # past the retry's backoff
    assert Worker(service, lease=5).run_once() == 1  # the POS still has none: still kept
    assert service.get(global_id="g").status is HoldStatus.INVOICE_FAILED
    time.sleep(0.2)  # past the next backoff
    assert Worker(service, lease=5).run_once() == 1  # the POS has them again
    assert service.get(global_id="g").status is HoldStatus.INVOICED


@pytest.mark.parametrize("other", ["failed", "lapsed", "sold", "running"])
def test_a_lapsed_hold_s_invoice_refused_after_its_lease_answers_what_the_ledger_keeps(
    client: RedisClient, other: str
) -> None:
    """The first invoice of a lapsed hold: the POS answers that the tickets are gone, but after
    the lease, when the worker has taken the invoice over. TEvo was told 410 hold_expired while
    the ledger kept the invoice (the worker's attempt failed it: invoice_failed, retried) and
    later sold it. The answer is what the other attempt made of it: kept (502), given back
    lapsed (410: the POS had no tickets for it either, and it was the first attempt), sold, or
    still running (409)."""
    pos = Pos()
    service = pos_service(client, pos, hold_ttl=0.05)
    service.hold(remote_id="R", quantity=1, global_id="g")
    time.sleep(PAST_LEASE)  # the hold lapses
    gone = errors.InsufficientQuantity("POS: 0 tickets", available=0)

    def taken_over() -> None:  # during A's POS call
        time.sleep(PAST_LEASE)  # A's lease ends
        if other == "running":
            assert service.ledger.claim_due(DueItem("i", "g"), "worker-2", lease=30) is not None
        else:
            if other == "failed":
                pos.fail["invoice"].append(errors.PosError("POS: 500", outcome_unknown=True))
            elif other == "lapsed":
                pos.fail["invoice"].append(gone)
            assert Worker(service, lease=5).run_once() == 1
        pos.fail["invoice"].append(gone)  # A's answer

    pos.during["invoice"] = taken_over
    if other == "failed":
        with pytest.raises(errors.PosError, match="kept and retried"):
            service.invoice(global_id="g", tevo_order_id=7)
        assert service.get(global_id="g").status is HoldStatus.INVOICE_FAILED
        assert list(service.ledger.scheduled("i")) == ["g"]
        time.sleep(PAST_LEASE)  # past the retry's backoff: the POS has the tickets again
        assert Worker(service, lease=5).run_once() == 1
        assert service.get(global_id="g").status is HoldStatus.INVOICED
    elif other == "lapsed":
        with pytest.raises(errors.HoldExpired):
            service.invoice(global_id="g", tevo_order_id=7)
        assert service.get(global_id="g").status is HoldStatus.EXPIRED
        assert list(service.ledger.scheduled("i")) == []
    elif other == "sold":
        assert service.invoice(global_id="g", tevo_order_id=7).hold.status is HoldStatus.INVOICED
    else:
        with pytest.raises(errors.RequestInProgress):
            service.invoice(global_id="g", tevo_order_id=7)
        assert service.get(global_id="g").status is HoldStatus.INVOICING


@pytest.mark.parametrize("other", ["failed", "running"])
def test_an_invoice_sold_after_its_lease_is_invoiced_whoever_took_it_over(
    client: RedisClient, other: str
) -> None:
    """The POS sells the tickets for invoice A, but its answer comes after the lease: the
    worker has taken the invoice over meanwhile, and its own POS call failed (or still runs).
    A's sale is the sale (the POS is idempotent per global_id): the invoice is done, and TEvo
    is told so, never 404 hold_not_found for a hold that is there and sold."""
    pos = Pos()
    service = pos_service(client, pos)
    service.hold(remote_id="R", quantity=1, global_id="g")

    def taken_over() -> None:  # during A's POS call, which then succeeds
        time.sleep(PAST_LEASE)  # A's lease ends
        if other == "running":
            assert service.ledger.claim_due(DueItem("i", "g"), "worker-2", lease=30) is not None
        else:
            pos.fail["invoice"].append(errors.PosError("POS failed", outcome_unknown=True))
            assert Worker(service, lease=5).run_once() == 1
            assert service.get(global_id="g").status is HoldStatus.INVOICE_FAILED

    pos.during["invoice"] = taken_over
    hold = service.invoice(global_id="g", tevo_order_id=7).hold

    assert (hold.status, hold.tevo_order_id) == (HoldStatus.INVOICED, 7)
    assert list(service.ledger.scheduled("i")) == []
    if other == "running":  # the worker's call lands at last: nothing more to record
        assert service.ledger.finish_invoice("g", "worker-2", 7).changed is False


def test_a_late_sale_of_another_order_is_not_taken_for_the_invoice(client: RedisClient) -> None:
    """Only a sale of the invoice's own order counts for another attempt's claim: a late finish
    of another order (or none) answers request_in_progress, never hold_not_found."""
    pos = Pos()
    service = pos_service(client, pos)
    service.hold(remote_id="R", quantity=1, global_id="g")
    ledger = service.ledger
    ledger.claim_invoice("g", 7, lease=30, token="attempt-b")
    for order in (8, None):
        with pytest.raises(errors.RequestInProgress):
            ledger.finish_invoice("g", "attempt-a", order)
    assert ledger.get("g").status is HoldStatus.INVOICING


def test_a_first_invoice_of_a_live_hold_that_the_pos_has_no_tickets_for_is_kept(
    client: RedisClient,
) -> None:
    """The POS lost the tickets of a hold that has not lapsed: the buyer is committed, so the
    failed sale is kept for the seller (502, invoice_failed), not answered as a lapse."""
    pos = Pos()
    pos.fail["invoice"].append(errors.InsufficientQuantity("POS: 0 tickets", available=0))
    service = pos_service(client, pos)
    service.hold(remote_id="R", quantity=1, global_id="g")
    with pytest.raises(errors.PosError):
        service.invoice(global_id="g", tevo_order_id=7)
    assert service.get(global_id="g").status is HoldStatus.INVOICE_FAILED


def test_a_first_invoice_of_a_lapsed_hold_whose_tickets_are_gone_is_hold_expired(
    client: RedisClient,
) -> None:
    pos = Pos()
    pos.fail["invoice"].append(errors.InsufficientQuantity("POS: 0 tickets", available=0))
    service = pos_service(client, pos, hold_ttl=0.05)
    service.hold(remote_id="R", quantity=1, global_id="g")
    time.sleep(PAST_LEASE)
    with pytest.raises(errors.HoldExpired):
        service.invoice(global_id="g", tevo_order_id=7)
    hold = service.get(global_id="g")
    assert (hold.status, hold.tevo_order_id) == (HoldStatus.EXPIRED, None)


def test_an_invoice_whose_sale_comes_after_the_deadline_and_another_hold_is_hold_expired(
    client: RedisClient,
) -> None:
    """The reference inventory step by step (a cluster, or fuse=False): TEvo invoices just
    before the hold's deadline, and the sale reaches the inventory just after it, once another
    hold has purged the lapsed hold and taken its tickets. The sale cannot be made: it was
    kept (502, invoice_failed) and retried for good while the other hold owns the tickets.
    The inventory says its hold lapsed before the sale came: the first invoice answers 410
    hold_expired, the hold given back lapsed, as for an invoice after the deadline."""
    settings = Settings(redis_url="redis://unused", api_keys=("k",), hold_ttl=0.5, lease=5)
    service = build_service(settings, client=client, fuse=False)
    inventory = service.adapter
    assert isinstance(inventory, RedisInventoryAdapter)
    inventory.set_quantity("L", 1)
    deadline = service.hold(remote_id="L", quantity=1, global_id="buyer").hold.expires_at
    sell = inventory.invoice

    def late(**call: Any) -> None:
        # the sale reaches the inventory after the deadline, another hold first
        time.sleep(max(deadline.timestamp() - time.time(), 0) + 0.05)
        service.hold(remote_id="L", quantity=1, global_id="other")
        sell(**call)

    inventory.invoice = late  # type: ignore[method-assign]
    with pytest.raises(errors.HoldExpired):
        service.invoice(global_id="buyer", tevo_order_id=7)

    buyer = service.get(global_id="buyer", history=True)
    claimed = next(e.at for e in buyer.events if e.event == "invoice_requested")
    assert claimed < deadline  # the invoice came before the deadline
    assert (buyer.status, buyer.tevo_order_id) == (HoldStatus.EXPIRED, None)
    assert list(service.ledger.scheduled("i")) == []
    assert service.get(global_id="other").status is HoldStatus.HELD
    assert inventory.stock("L").held == 1


# (the fused path runs on one Redis, never on a cluster: test_behaviour checks the fallback)
@pytest.mark.parametrize("client", ["fakeredis", "redis"], indirect=True)
def test_a_retried_fused_invoice_whose_tickets_are_gone_is_kept(client: RedisClient) -> None:
    """The same with the reference inventory on one Redis (its sale and record in one script):
    the listing vanished, the invoice failed; the listing is back without those tickets."""
    service = build_service(
        Settings(redis_url="redis://unused", api_keys=("k",), hold_ttl=0.05, retry_base=0.01),
        client=client,
    )
    inventory = service.adapter
    assert isinstance(inventory, RedisInventoryAdapter) and inventory.fuses_with(service.ledger)
    inventory.set_quantity("L", 1)
    service.hold(remote_id="L", quantity=1, global_id="g")
    client.delete(*inventory.keys.listing("L"))  # the listing is removed
    with pytest.raises(errors.PosError, match="listing_not_found"):
        service.invoice(global_id="g", tevo_order_id=7)
    time.sleep(PAST_LEASE)  # the hold's deadline passes
    inventory.set_quantity("L", 0)  # the listing is back, with no tickets

    with pytest.raises(errors.PosError, match="kept and retried"):
        service.invoice(global_id="g", tevo_order_id=7)

    hold = service.get(global_id="g")
    assert (hold.status, hold.tevo_order_id, hold.invoice_attempts) == (
        HoldStatus.INVOICE_FAILED,
        7,
        2,
    )


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "stepwise"])
def test_a_reference_first_invoice_of_a_live_hold_whose_tickets_are_gone_is_kept(
    client: RedisClient, fuse: bool
) -> None:
    """The listing lost a live hold's tickets (removed and stocked again): the buyer is
    committed, so the sale is kept as failed for the seller, on the fused path as on the other
    (where the inventory, told the hold's deadline, must not take it for a lapse)."""
    service = build_service(
        Settings(redis_url="redis://unused", api_keys=("k",), retry_base=0.01),
        client=client,
        fuse=fuse,
    )
    inventory = service.adapter
    assert isinstance(inventory, RedisInventoryAdapter)
    inventory.set_quantity("L", 1)
    service.hold(remote_id="L", quantity=1, global_id="g")
    client.delete(*inventory.keys.listing("L"))
    inventory.set_quantity("L", 0)

    with pytest.raises(errors.PosError, match="kept and retried"):
        service.invoice(global_id="g", tevo_order_id=7)

    hold = service.get(global_id="g")
    assert (hold.status, hold.tevo_order_id) == (HoldStatus.INVOICE_FAILED, 7)


# -- the worker --------------------------------------------------------------------------------


@pytest.mark.parametrize("meanwhile", ["taken_over", "given_back"])
def test_a_worker_whose_invoice_call_outlived_its_lease_goes_on(
    client: RedisClient, caplog: pytest.LogCaptureFixture, meanwhile: str
) -> None:
    """The worker's POS call for an invoice retry outlives its lease, and another worker takes
    the item over meanwhile. The sale it made is the sale (the POS is idempotent per global_id):
    it is recorded, whoever holds the claim now. Unless the invoice was given back meanwhile
    (that attempt found the tickets gone): recording the sale then finds no claim of its order,
    and the worker logs it and goes on (it used to die)."""
    pos = Pos()
    pos.fail["invoice"].append(errors.PosError("POS failed"))
    service = pos_service(client, pos)
    service.hold(remote_id="R", quantity=1, global_id="g")
    with pytest.raises(errors.PosError):
        service.invoice(global_id="g", tevo_order_id=7)
    time.sleep(PAST_LEASE)
    ledger = service.ledger

    def taken_over() -> None:
        time.sleep(PAST_LEASE)
        assert ledger.claim_due(DueItem("i", "g"), "worker-2", lease=30) is not None
        if meanwhile == "given_back":
            assert ledger.abort_invoice("g", "worker-2", lapsed=True).changed

    pos.during["invoice"] = taken_over
    with caplog.at_level(logging.WARNING, logger="tevo_hold.worker"):
        assert Worker(service, lease=LEASE, name="worker-1").run_once() == 1

    assert list(ledger.scheduled("i")) == []
    if meanwhile == "taken_over":
        assert service.get(global_id="g").status is HoldStatus.INVOICED
        assert "ended after its lease" not in caplog.text
    else:
        assert "ended after its lease" in caplog.text
        assert service.get(global_id="g").status is HoldStatus.EXPIRED


def test_a_worker_round_that_fails_unexpectedly_is_logged_and_the_worker_goes_on(
    client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    service = pos_service(client, Pos())
    worker = Worker(service, interval=0.01)
    stop = threading.Event()
    rounds: list[int] = []

    def run_once(stop: threading.Event | None = None) -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bug")
        stop.set()
        return 0

    worker.run_once = run_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="tevo_hold.worker"):
        worker.run(stop)
    assert len(rounds) == 2
    assert "a round failed" in caplog.text and "RuntimeError: a bug" in caplog.text


def test_an_invoice_the_pos_has_failed_for_days_is_still_retried(client: RedisClient) -> None:
    """Doubling the backoff per attempt overflowed a float after 1,024 failed attempts (about
    3.5 days of a POS failing every 5 minutes): the worker then failed every round on that
    invoice and never retried it again. The backoff stays at its cap however many attempts."""
    pos = Pos()
    pos.fail["invoice"] += [errors.PosError("POS down")] * 2
    service = pos_service(client, pos, retry_cap=0.05)
    service.hold(remote_id="R", quantity=1, global_id="g")
    with pytest.raises(errors.PosError):
        service.invoice(global_id="g", tevo_order_id=7)
    client.hset(service.ledger.keys.hold("g")[0], "na", 5000)  # days of failed attempts
    assert service.retry_delay(5001) == 0.05

    time.sleep(PAST_LEASE)
    assert Worker(service, lease=5).run_once() == 1  # fails once more, retried after the cap
    assert service.get(global_id="g").invoice_attempts == 5001
    time.sleep(PAST_LEASE)
    assert Worker(service, lease=5).run_once() == 1
    assert service.get(global_id="g").status is HoldStatus.INVOICED
