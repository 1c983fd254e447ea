"""Random sequences of calls against a model of the contract (hypothesis's stateful testing).

The example-based suite (test_behaviour.py) checks each rule once; here hypothesis strings hold,
release and invoice calls together at random, with TEvo's retries (the same call again), calls
that conflict (another quantity, listing or order), listings that run out, and holds that lapse,
and checks every answer, every hold's status and every listing's stock against a model of a few
lines: no oversell, tickets sold once, retries answered as the first call was, lapsed holds'
tickets back on sale. It runs on each backend of the behaviour suite (fakeredis, a real
redis-server, a cluster), on the one-script and the step-by-step path.

Time: holds last :data:`TTL` seconds. The model knows a hold as live until :data:`LIVE` seconds
after its answer and lapsed from :data:`LAPSED` seconds on; before a call, the test waits out any
hold between the two, so that every answer has one right value. Unless the machine stalls for
longer than TTL - LIVE in between: a hold modelled as live may then have lapsed by the time Redis
sees the call, and a step whose check fails after such a stall is set aside, not counted as a
failure (:func:`stall_tolerant`). Most of the test's time is those waits: it runs
:data:`EXAMPLES` sequences per backend and path (the same ones on every run), and
``TEVO_HOLD_MODEL_EXAMPLES=500`` explores further (other sequences than CI's too).
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.cluster import RedisCluster

from tevo_hold import HoldService, RedisInventoryAdapter, Settings, build_service
from tevo_hold import errors as e
from tevo_hold._redis import RedisClient

TTL = 0.15
LIVE = 0.04
LAPSED = 0.22
#: Sequences per backend and path: a few, as CI runs them; more explore further.
EXAMPLES = int(os.environ.get("TEVO_HOLD_MODEL_EXAMPLES", "10"))
#: The listings and their tickets: few, so that holds run out of them.
STOCK = {"L1": 3, "L2": 5}
GIDS = st.sampled_from(["g1", "g2", "g3", "g4", "g5"])
RIDS = st.sampled_from(sorted(STOCK))
QTYS = st.integers(min_value=1, max_value=3)
ORDERS = st.sampled_from([101, 102])
#: The kinds of answer every run must have checked at least once (Contract.seen), so that an edit
#: that changes the sample of sequences cannot leave a rule unexercised unnoticed. Which lapses a
#: run meets depends on its timing, so only reads of lapsed holds are required of those.
COVERED = frozenset(
    {
        "hold: held",
        "hold: replayed",
        "hold: global_id_conflict",
        "hold: insufficient_quantity",
        "release: released",
        "release: replayed",
        "release: hold_not_found",
        "release: hold_already_invoiced",
        "invoice: a live hold sold",
        "invoice: replayed",
        "invoice: order_id_conflict",
        "invoice: hold_released",
        "invoice: hold_not_found",
        "read: held",
        "read: expired",
        "read: released",
        "read: invoiced",
    }
)


@dataclass
class Record:
    """The model of one hold: what the service must answer for it."""

    rid: str
    qty: int
    sent: float  # time.monotonic() when its hold was sent
    made: float  # time.monotonic() when its hold was answered
    status: str = "held"  # held, released, expired (released after lapsing), invoiced
    order: int | None = None

    def lapsed(self, now: float) -> bool:
        return self.status == "held" and now - self.made >= LAPSED

    def reads(self, now: float) -> str:
        """The status a read of it answers at ``now``."""
        return "expired" if self.lapsed(now) else self.status


def stall_tolerant(step: Callable[..., None]) -> Callable[..., None]:
    """A rule or invariant whose failed check is set aside (the test case is dropped, as
    hypothesis drops one whose assumption fails) when the machine stalled during it: a hold that
    the model counted as live at the step's last settle() is older than TTL now, so Redis may
    have seen it lapsed; the check had no one right value. Any other failure fails the test."""

    @functools.wraps(step)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            step(self, *args, **kwargs)
        except (AssertionError, e.TevoHoldError, pytest.fail.Exception):
            end = time.monotonic()
            assume(not self.stalled(end))
            raise

    return checked


def machine(service: HoldService) -> type[RuleBasedStateMachine]:
    """A state machine class on ``service`` (each run starts from an empty Redis)."""
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)

    class Contract(RuleBasedStateMachine):
        #: Each kind of answer checked, over every sequence run (see COVERED).
        seen: ClassVar[Counter[str]] = Counter()

        def __init__(self) -> None:
            super().__init__()
            service.ledger.client.flushall()
            for rid, quantity in STOCK.items():
                adapter.set_quantity(rid, quantity)
            self.records: dict[str, Record] = {}
            self.sold = dict.fromkeys(STOCK, 0)
            self.settled = time.monotonic()  # the time the last settle() answered

        # -- the model ---------------------------------------------------------------------
        def settle(self) -> float:
            """Wait out every hold that is neither surely live nor surely lapsed, and answer the
            time the next call is to be modelled at (made right after this)."""
            while True:  # (a wait may bring younger holds into the window)
                now = time.monotonic()
                unsure = [
                    r.made + LAPSED - now
                    for r in self.records.values()
                    if r.status == "held" and LIVE <= now - r.made < LAPSED
                ]
                if not unsure:
                    self.settled = now
                    return now
                time.sleep(max(unsure))

        def stalled(self, end: float) -> bool:
            """Whether a hold modelled as live at the last settle() may have lapsed by ``end``."""
            return any(
                r.status == "held" and self.settled - r.made < LIVE and end - r.sent >= TTL
                for r in self.records.values()
            )

        def available(self, rid: str, now: float) -> int:
            live = sum(
                r.qty
                for r in self.records.values()
                if r.rid == rid and r.status == "held" and not r.lapsed(now)
            )
            return STOCK[rid] - self.sold[rid] - live

        # -- the calls ---------------------------------------------------------------------
        @rule(gid=GIDS, rid=RIDS, qty=QTYS)
        @stall_tolerant
        def hold(self, gid: str, rid: str, qty: int) -> None:
            now = self.settle()
            record = self.records.get(gid)
            if record is not None and (record.rid, record.qty) != (rid, qty):
                with pytest.raises(e.GlobalIdConflict):
                    service.hold(remote_id=rid, quantity=qty, global_id=gid)
                self.seen["hold: global_id_conflict"] += 1
                return
            if record is None and self.available(rid, now) < qty:
                with pytest.raises(e.InsufficientQuantity) as refused:
                    service.hold(remote_id=rid, quantity=qty, global_id=gid)
                assert refused.value.available == self.available(rid, now)
                self.seen["hold: insufficient_quantity"] += 1
                return
            sent = time.monotonic()
            outcome = service.hold(remote_id=rid, quantity=qty, global_id=gid)
            # a retry is answered as the first call was, whatever happened to the hold since
            assert outcome.replayed == (record is not None)
            assert (outcome.hold.status, outcome.hold.remote_id, outcome.hold.quantity) == (
                "held",
                rid,
                qty,
            )
            if record is None:
                self.records[gid] = Record(rid, qty, sent, time.monotonic())
            self.seen["hold: replayed" if record else "hold: held"] += 1

        @rule(gid=GIDS, rid=RIDS, one_more=st.booleans())
        def hold_what_is_left(self, gid: str, rid: str, one_more: bool) -> None:
            """A hold of every ticket the listing has left, or of one more (refused): where an
            oversell would show."""
            quantity = self.available(rid, self.settle()) + one_more
            if quantity >= 1:
                self.hold(gid, rid, quantity)

        @rule(gid=GIDS)
        @stall_tolerant
        def release(self, gid: str) -> None:
            now = self.settle()
            record = self.records.get(gid)
            if record is None:
                with pytest.raises(e.HoldNotFound):
                    service.release(global_id=gid)
                self.seen["release: hold_not_found"] += 1
                return
            if record.status == "invoiced":
                with pytest.raises(e.HoldAlreadyInvoiced):
                    service.release(global_id=gid)
                self.seen["release: hold_already_invoiced"] += 1
                return
            outcome = service.release(global_id=gid)
            assert outcome.replayed == (record.status != "held")
            if record.status == "held":
                record.status = "expired" if record.lapsed(now) else "released"
            assert outcome.hold.status == record.status
            self.seen["release: replayed" if outcome.replayed else f"release: {record.status}"] += 1

        @rule(gid=GIDS, order=ORDERS)
        @stall_tolerant
        def invoice(self, gid: str, order: int) -> None:
            now = self.settle()
            record = self.records.get(gid)
            call = lambda: service.invoice(global_id=gid, tevo_order_id=order)  # noqa: E731
            if record is None:
                with pytest.raises(e.HoldNotFound):
                    call()
                self.seen["invoice: hold_not_found"] += 1
                return
            if record.status in ("released", "expired"):
                with pytest.raises(e.HoldReleased):
                    call()
                self.seen["invoice: hold_released"] += 1
                return
            if record.status == "invoiced":
                if record.order != order:
                    with pytest.raises(e.OrderIdConflict):
                        call()
                    self.seen["invoice: order_id_conflict"] += 1
                    return
                outcome = call()
                assert outcome.replayed
                assert (outcome.hold.status, outcome.hold.tevo_order_id) == ("invoiced", order)
                self.seen["invoice: replayed"] += 1
                return
            # held: live, or lapsed and sold if its tickets are still there
            lapsed = record.lapsed(now)
            if lapsed and self.available(record.rid, now) < record.qty:
                with pytest.raises(e.HoldExpired):
                    call()
                self.seen["invoice: hold_expired"] += 1
                return
            outcome = call()
            assert not outcome.replayed
            assert (outcome.hold.status, outcome.hold.tevo_order_id) == ("invoiced", order)
            record.status, record.order = "invoiced", order
            self.sold[record.rid] += record.qty
            self.seen["invoice: a lapsed hold sold" if lapsed else "invoice: a live hold sold"] += 1

        @precondition(lambda self: self.records)
        @rule(data=st.data())
        def retry_hold(self, data: st.DataObject) -> None:
            """TEvo sends a hold again, as it was first sent."""
            gid = data.draw(st.sampled_from(sorted(self.records)))
            record = self.records[gid]
            self.hold(gid, record.rid, record.qty)

        @precondition(lambda self: self.records)
        @rule(data=st.data(), order=ORDERS)
        def invoice_known(self, data: st.DataObject, order: int) -> None:
            """An invoice of a hold made before (the rule above mostly names none)."""
            self.invoice(data.draw(st.sampled_from(sorted(self.records))), order)

        @precondition(lambda self: self.records)
        @rule(data=st.data())
        def release_known(self, data: st.DataObject) -> None:
            """A release of a hold made before."""
            self.release(data.draw(st.sampled_from(sorted(self.records))))

        @precondition(lambda self: any(r.order for r in self.records.values()))
        @rule(data=st.data())
        def retry_invoice(self, data: st.DataObject) -> None:
            """TEvo sends an invoice again, as it was first sent."""
            invoiced = sorted(g for g, r in self.records.items() if r.order)
            gid = data.draw(st.sampled_from(invoiced))
            self.invoice(gid, self.records[gid].order or 0)

        @rule()
        def wait(self) -> None:
            """Time passes: every hold made so far lapses."""
            time.sleep(LAPSED)

        # -- what must always hold ---------------------------------------------------------
        @invariant()
        @stall_tolerant
        def stock_adds_up(self) -> None:
            for rid in STOCK:
                now = self.settle()
                stock = adapter.stock(rid)
                assert (stock.on_hand, stock.sold) == (STOCK[rid] - self.sold[rid], self.sold[rid])
                assert stock.available == self.available(rid, now), rid

        @invariant()
        @stall_tolerant
        def every_hold_reads_as_modelled(self) -> None:
            for gid, record in self.records.items():
                now = self.settle()
                hold = service.get(global_id=gid)
                assert (hold.status, hold.remote_id, hold.quantity) == (
                    record.reads(now),
                    record.rid,
                    record.qty,
                ), gid
                assert hold.tevo_order_id == record.order
                self.seen[f"read: {hold.status}"] += 1

    return Contract


@pytest.mark.timeout(60 + 12 * EXAMPLES)  # both paths' sequences, mostly waiting
def test_random_call_sequences_follow_the_contract(client: RedisClient) -> None:
    """Both paths on fakeredis and a redis-server; on a cluster the step-by-step one only (where
    the service always takes it)."""
    paths = [False] if isinstance(client, RedisCluster) else [True, False]
    for fuse in paths:
        service = build_service(
            Settings(redis_url="redis://unused", api_keys=("k",), hold_ttl=TTL),
            client=client,
            fuse=fuse,
        )
        contract = machine(service)
        run_state_machine_as_test(
            contract,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=25,
                deadline=None,
                derandomize=EXAMPLES <= 10,  # CI's few: the same on every run, so reproducible
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        missed = COVERED - set(contract.seen)
        assert not missed, (
            f"No sequence checked an answer of these kinds: {sorted(missed)}. The sample (fixed "
            "by the state machine's source) no longer reaches them: make the rules reach them, "
            f"or run more sequences (TEVO_HOLD_MODEL_EXAMPLES). Seen: {dict(contract.seen)}"
        )
