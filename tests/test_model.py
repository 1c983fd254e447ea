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
hold between the two, so that every answer has one right value. Most of the test's time is those
waits: it runs :data:`EXAMPLES` sequences per backend and path (the same ones on every run), and
``TEVO_HOLD_MODEL_EXAMPLES=500`` explores further (other sequences than CI's too).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
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


@dataclass
class Record:
    """The model of one hold: what the service must answer for it."""

    rid: str
    qty: int
    made: float  # time.monotonic() when its hold was answered
    status: str = "held"  # held, released, expired (released after lapsing), invoiced
    order: int | None = None

    def lapsed(self, now: float) -> bool:
        return self.status == "held" and now - self.made >= LAPSED

    def reads(self, now: float) -> str:
        """The status a read of it answers at ``now``."""
        return "expired" if self.lapsed(now) else self.status


def machine(service: HoldService) -> type[RuleBasedStateMachine]:
    """A state machine class on ``service`` (each run starts from an empty Redis)."""
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)

    class Contract(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            service.ledger.client.flushall()
            for rid, quantity in STOCK.items():
                adapter.set_quantity(rid, quantity)
            self.records: dict[str, Record] = {}
            self.sold = dict.fromkeys(STOCK, 0)

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
                    return now
                time.sleep(max(unsure))

        def available(self, rid: str, now: float) -> int:
            live = sum(
                r.qty
                for r in self.records.values()
                if r.rid == rid and r.status == "held" and not r.lapsed(now)
            )
            return STOCK[rid] - self.sold[rid] - live

        # -- the calls ---------------------------------------------------------------------
        @rule(gid=GIDS, rid=RIDS, qty=QTYS)
        def hold(self, gid: str, rid: str, qty: int) -> None:
            now = self.settle()
            record = self.records.get(gid)
            if record is not None and (record.rid, record.qty) != (rid, qty):
                with pytest.raises(e.GlobalIdConflict):
                    service.hold(remote_id=rid, quantity=qty, global_id=gid)
                return
            if record is None and self.available(rid, now) < qty:
                with pytest.raises(e.InsufficientQuantity) as refused:
                    service.hold(remote_id=rid, quantity=qty, global_id=gid)
                assert refused.value.available == self.available(rid, now)
                return
            outcome = service.hold(remote_id=rid, quantity=qty, global_id=gid)
            # a retry is answered as the first call was, whatever happened to the hold since
            assert outcome.replayed == (record is not None)
            assert (outcome.hold.status, outcome.hold.remote_id, outcome.hold.quantity) == (
                "held",
                rid,
                qty,
            )
            if record is None:
                self.records[gid] = Record(rid, qty, time.monotonic())

        @rule(gid=GIDS)
        def release(self, gid: str) -> None:
            now = self.settle()
            record = self.records.get(gid)
            if record is None:
                with pytest.raises(e.HoldNotFound):
                    service.release(global_id=gid)
                return
            if record.status == "invoiced":
                with pytest.raises(e.HoldAlreadyInvoiced):
                    service.release(global_id=gid)
                return
            outcome = service.release(global_id=gid)
            assert outcome.replayed == (record.status != "held")
            if record.status == "held":
                record.status = "expired" if record.lapsed(now) else "released"
            assert outcome.hold.status == record.status

        @rule(gid=GIDS, order=ORDERS)
        def invoice(self, gid: str, order: int) -> None:
            now = self.settle()
            record = self.records.get(gid)
            call = lambda: service.invoice(global_id=gid, tevo_order_id=order)  # noqa: E731
            if record is None:
                with pytest.raises(e.HoldNotFound):
                    call()
                return
            if record.status in ("released", "expired"):
                with pytest.raises(e.HoldReleased):
                    call()
                return
            if record.status == "invoiced":
                if record.order != order:
                    with pytest.raises(e.OrderIdConflict):
                        call()
                    return
                outcome = call()
                assert outcome.replayed
                assert (outcome.hold.status, outcome.hold.tevo_order_id) == ("invoiced", order)
                return
            # held: live, or lapsed and sold if its tickets are still there
            if record.lapsed(now) and self.available(record.rid, now) < record.qty:
                with pytest.raises(e.HoldExpired):
                    call()
                return
            outcome = call()
            assert not outcome.replayed
            assert (outcome.hold.status, outcome.hold.tevo_order_id) == ("invoiced", order)
            record.status, record.order = "invoiced", order
            self.sold[record.rid] += record.qty

        @precondition(lambda self: self.records)
        @rule(data=st.data())
        def retry_hold(self, data: st.DataObject) -> None:
            """TEvo sends a hold again, as it was first sent."""
            gid = data.draw(st.sampled_from(sorted(self.records)))
            record = self.records[gid]
            self.hold(gid, record.rid, record.qty)

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
        def stock_adds_up(self) -> None:
            for rid in STOCK:
                now = self.settle()
                stock = adapter.stock(rid)
                assert (stock.on_hand, stock.sold) == (STOCK[rid] - self.sold[rid], self.sold[rid])
                assert stock.available == self.available(rid, now), rid

        @invariant()
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
        run_state_machine_as_test(
            machine(service),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=25,
                deadline=None,
                derandomize=EXAMPLES <= 10,  # CI's few: the same on every run, so reproducible
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
