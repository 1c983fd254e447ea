"""The core's behaviour suite: runs on fakeredis and on a real redis-server (see conftest)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tevo_hold import HoldService, HoldStatus, RedisInventoryAdapter, Settings, build_service
from tevo_hold import errors as e
from tevo_hold._redis import Script
from tevo_hold.ledger import DueItem


def hold(service: HoldService, gid: str = "g1", rid: str = "L1", qty: int = 2):  # type: ignore[no-untyped-def]
    return service.hold(remote_id=rid, quantity=qty, global_id=gid)


@pytest.fixture
def stocked(inventory: RedisInventoryAdapter) -> RedisInventoryAdapter:
    inventory.set_quantity("L1", 5)
    return inventory


# -- hold --------------------------------------------------------------------------------------


def test_hold_takes_tickets_and_records_the_hold(service, stocked):
    outcome = hold(service)
    assert not outcome.replayed
    h = outcome.hold
    assert (h.global_id, h.remote_id, h.quantity, h.status) == ("g1", "L1", 2, HoldStatus.HELD)
    assert 899 <= (h.expires_at - h.created_at).total_seconds() <= 900
    assert stocked.stock("L1").available == 3
    assert service.get(global_id="g1") == h


def test_hold_retry_replays_the_first_answer_and_takes_nothing_more(service, stocked):
    first = hold(service).hold
    again = hold(service)
    assert again.replayed and again.hold == first
    assert stocked.stock("L1").held == 2


def test_hold_retry_after_invoice_still_replays_the_hold_answer(service, stocked):
    first = hold(service).hold
    service.invoice(global_id="g1", tevo_order_id=7)
    again = hold(service)
    assert again.replayed and again.hold == first and again.hold.status is HoldStatus.HELD


def test_hold_of_same_global_id_with_other_quantity_or_listing_conflicts(service, stocked):
    stocked.set_quantity("L2", 5)
    hold(service)
    with pytest.raises(e.GlobalIdConflict):
        hold(service, qty=3)
    with pytest.raises(e.GlobalIdConflict):
        hold(service, rid="L2")
    assert stocked.stock("L1").held == 2 and stocked.stock("L2").held == 0


def test_no_oversell_and_a_refused_hold_leaves_no_record(service, stocked):
    hold(service, "a", qty=4)
    with pytest.raises(e.InsufficientQuantity) as info:
        hold(service, "b", qty=2)
    assert info.value.available == 1
    with pytest.raises(e.HoldNotFound):
        service.get(global_id="b")
    # a refused hold is not stored: its retry tries again, and succeeds once tickets are back
    service.release(global_id="a")
    assert hold(service, "b", qty=2).replayed is False


def test_hold_on_unknown_listing(service, stocked):
    with pytest.raises(e.ListingNotFound):
        hold(service, rid="nope")
    with pytest.raises(e.HoldNotFound):
        service.get(global_id="g1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", 0),
        ("quantity", -1),
        ("quantity", True),
        ("quantity", 2.5),
        ("quantity", "2"),
        ("quantity", None),
        ("quantity", 10_001),
        ("remote_id", ""),
        ("remote_id", 5),
        ("global_id", "x" * 256),
        ("global_id", "\ud800"),
    ],
)
def test_bad_arguments_raise_invalid_request_and_change_nothing(service, stocked, field, value):
    args = {"remote_id": "L1", "quantity": 1, "global_id": "g1", field: value}
    with pytest.raises(e.InvalidRequest) as info:
        service.hold(**args)
    assert field in info.value.errors
    assert stocked.stock("L1").held == 0


def test_integral_float_quantity_is_an_integer(service, stocked):
    assert service.hold(remote_id="L1", quantity=2.0, global_id="g").hold.quantity == 2  # type: ignore[arg-type]


# -- release -----------------------------------------------------------------------------------


def test_release_gives_tickets_back_and_repeats_harmlessly(service, stocked):
    hold(service)
    first = service.release(global_id="g1")
    assert first.hold.status is HoldStatus.RELEASED and not first.replayed
    assert first.hold.released_at is not None
    again = service.release(global_id="g1")
    assert again.replayed and again.hold == first.hold
    assert stocked.stock("L1").available == 5


def test_release_of_unknown_hold(service, stocked):
    with pytest.raises(e.HoldNotFound):
        service.release(global_id="never")


def test_release_after_invoice_is_refused(service, stocked):
    hold(service)
    service.invoice(global_id="g1", tevo_order_id="A-1")
    with pytest.raises(e.HoldAlreadyInvoiced):
        service.release(global_id="g1")
    assert stocked.stock("L1").sold == 2


# -- invoice -----------------------------------------------------------------------------------


def test_invoice_sells_the_held_tickets(service, stocked):
    hold(service)
    outcome = service.invoice(global_id="g1", tevo_order_id=1234)
    h = outcome.hold
    assert h.status is HoldStatus.INVOICED and h.tevo_order_id == 1234 and h.invoiced_at
    stock = stocked.stock("L1")
    assert (stock.on_hand, stock.held, stock.sold, stock.available) == (3, 0, 2, 3)


def test_invoice_retry_replays_and_sells_once(service, stocked):
    hold(service)
    first = service.invoice(global_id="g1", tevo_order_id="T-9").hold
    again = service.invoice(global_id="g1", tevo_order_id="T-9")
    assert again.replayed and again.hold == first
    assert stocked.stock("L1").sold == 2


def test_invoice_under_another_order_id_conflicts(service, stocked):
    hold(service)
    service.invoice(global_id="g1", tevo_order_id=1)
    with pytest.raises(e.OrderIdConflict):
        service.invoice(global_id="g1", tevo_order_id=2)


def test_invoice_after_release_is_refused(service, stocked):
    hold(service)
    service.release(global_id="g1")
    with pytest.raises(e.HoldReleased):
        service.invoice(global_id="g1", tevo_order_id=1)
    assert stocked.stock("L1").sold == 0


def test_invoice_of_unknown_hold(service, stocked):
    with pytest.raises(e.HoldNotFound):
        service.invoice(global_id="never", tevo_order_id=1)


# -- expiry (short TTL, no long sleeps) -----------------------------------------------------------


def test_hold_lapses_at_its_ttl_and_tickets_come_back(make_service, stocked):
    service = make_service(hold_ttl=0.3)
    h = hold(service, qty=5).hold
    # read first, then Redis's clock: the read was made before the deadline if the clock still
    # says so (on a machine that stalls past the TTL in between, the hold lapsed already)
    taken = stocked.stock("L1").available
    if _redis_now_ms(service) < h.expires_at.timestamp() * 1000:
        assert taken == 0
    time.sleep(0.35)
    assert service.get(global_id="g1").status is HoldStatus.EXPIRED
    assert stocked.stock("L1").available == 5
    assert h.expires_at > h.created_at


def test_release_of_lapsed_hold_answers_expired(make_service, stocked):
    service = make_service(hold_ttl=0.3)
    hold(service)
    time.sleep(0.35)
    outcome = service.release(global_id="g1")
    assert outcome.hold.status is HoldStatus.EXPIRED
    assert service.release(global_id="g1").hold.status is HoldStatus.EXPIRED
    assert stocked.stock("L1").available == 5


def test_invoice_of_lapsed_hold_retakes_the_tickets_when_there(make_service, stocked):
    service = make_service(hold_ttl=0.3)
    hold(service)
    time.sleep(0.35)
    outcome = service.invoice(global_id="g1", tevo_order_id=5)
    assert outcome.hold.status is HoldStatus.INVOICED
    assert stocked.stock("L1").sold == 2 and stocked.stock("L1").on_hand == 3


def test_invoice_of_lapsed_hold_whose_tickets_are_gone_is_hold_expired(make_service, stocked):
    service = make_service(hold_ttl=0.3)
    hold(service, qty=5)
    time.sleep(0.35)
    long_lived = make_service()
    hold(long_lived, "other", qty=4)
    with pytest.raises(e.HoldExpired):
        service.invoice(global_id="g1", tevo_order_id=5)
    assert service.get(global_id="g1").status is HoldStatus.EXPIRED
    assert stocked.stock("L1").sold == 0
    # the hold is as it was: a retry tries again and now succeeds once tickets came back
    long_lived.release(global_id="other")
    assert service.invoice(global_id="g1", tevo_order_id=5).hold.status is HoldStatus.INVOICED


def test_invoice_in_progress_never_lapses(make_service, stocked):
    service = make_service(hold_ttl=0.3)
    hold(service)
    service.ledger.claim_invoice("g1", 9, lease=10, token="t")
    time.sleep(0.35)
    assert service.get(global_id="g1").status is HoldStatus.INVOICING
    with pytest.raises(e.RequestInProgress):
        service.release(global_id="g1")


# -- leases: concurrent and dead requests ------------------------------------------------------


def test_identical_hold_while_the_first_runs_is_in_progress(service, stocked):
    service.ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="first")
    with pytest.raises(e.RequestInProgress) as info:
        hold(service)
    assert 1 <= info.value.retry_after <= 10
    with pytest.raises(e.RequestInProgress):
        service.release(global_id="g1")
    with pytest.raises(e.RequestInProgress):
        service.invoice(global_id="g1", tevo_order_id=1)


def test_a_dead_request_lease_lapses_and_a_retry_completes_the_hold(make_service, stocked):
    service = make_service(lease=0.2)
    # a request that claimed and took the tickets, then died before recording the hold
    claim = service.ledger.claim_hold("g1", "L1", 2, ttl=900, lease=0.2, token="dead")
    stocked.hold(global_id="g1", remote_id="L1", quantity=2, expires_at=claim.hold.expires_at)
    time.sleep(0.25)
    outcome = hold(service)
    assert outcome.hold.status is HoldStatus.HELD and not outcome.replayed
    assert stocked.stock("L1").held == 2  # the adapter's hold is idempotent per global_id


def test_a_dead_invoice_is_taken_over_by_its_retry_and_sells_once(make_service, stocked):
    service = make_service(lease=0.2)
    hold(service)
    service.ledger.claim_invoice("g1", 77, lease=0.2, token="dead")
    stocked.invoice(global_id="g1", remote_id="L1", quantity=2, tevo_order_id=77)
    time.sleep(0.25)
    assert service.invoice(global_id="g1", tevo_order_id=77).hold.status is HoldStatus.INVOICED
    assert stocked.stock("L1").sold == 2


# -- scripts are safe to run twice (redis-py resends a script whose reply it lost) ---------------


def test_every_ledger_command_is_safe_to_repeat(service, stocked):
    ledger = service.ledger
    c1 = ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="t")
    assert ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="t").changed
    assert ledger.finish_hold("g1", "t").changed
    assert not ledger.finish_hold("g1", "t").changed
    assert ledger.get("g1").status is HoldStatus.HELD
    assert ledger.claim_invoice("g1", 5, lease=10, token="u").changed
    assert ledger.claim_invoice("g1", 5, lease=10, token="u").changed
    assert ledger.finish_invoice("g1", "u").changed
    again = ledger.finish_invoice("g1", "u")
    assert not again.changed and again.hold.status is HoldStatus.INVOICED
    assert again.hold.created_at >= c1.hold.created_at


def test_every_inventory_command_is_safe_to_repeat(service, stocked):
    claim = service.ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="t")
    for _ in range(2):
        stocked.hold(global_id="g1", remote_id="L1", quantity=2, expires_at=claim.hold.expires_at)
    assert stocked.stock("L1").held == 2
    for _ in range(2):
        stocked.invoice(global_id="g1", remote_id="L1", quantity=2, tevo_order_id=1)
    assert (stocked.stock("L1").sold, stocked.stock("L1").on_hand) == (2, 3)
    for _ in range(2):
        stocked.release(global_id="g1", remote_id="L1", quantity=2)
    assert stocked.stock("L1").held == 0 and stocked.stock("L1").on_hand == 3


def test_release_runs_twice_without_giving_back_twice(service, stocked):
    hold(service, "a", qty=2)
    hold(service, "b", qty=3)
    for _ in range(2):
        stocked.release(global_id="a", remote_id="L1", quantity=2)
    assert stocked.stock("L1").held == 3


# -- ids are data ------------------------------------------------------------------------------


WEIRD = ["a", "a}b", "a%7Db", "{a}", "a:b", "a*", "a b", "Ünïcødé", "票", "%", "{", "}"]


def test_ids_with_any_characters_are_distinct_holds_and_listings(service, inventory):
    for i, rid in enumerate(WEIRD):
        inventory.set_quantity(rid, 10 + i)
    for i, gid in enumerate(WEIRD):
        hold(service, gid, rid=WEIRD[-1 - i], qty=1 + i % 3)
    for i, gid in enumerate(WEIRD):
        h = service.get(global_id=gid)
        assert (h.global_id, h.remote_id, h.quantity) == (gid, WEIRD[-1 - i], 1 + i % 3)
    for i, rid in enumerate(WEIRD):
        assert inventory.stock(rid).on_hand == 10 + i


@pytest.mark.parametrize("prefix", ["tevo_hold", "shop:g:1"])
def test_scan_lists_every_hold_by_its_own_id_even_with_colon_g_colon(make_service, prefix):
    """``tevo-hold holds list`` reads each id back from its key: ids (and prefixes) with
    ``:g:`` in them are listed as they are, each once."""
    service = make_service(key_prefix=prefix)
    inventory = service.adapter
    assert isinstance(inventory, RedisInventoryAdapter)
    inventory.set_quantity("L1", 100)
    gids = ["order:g:7", "7", "x:g:y", ":g:", "g:", ":g", *WEIRD]
    for i, gid in enumerate(gids):
        hold(service, gid, qty=1 + i % 3)
    listed = sorted((h.global_id, h.quantity) for h in service.ledger.scan(count=5))
    assert listed == sorted((gid, 1 + i % 3) for i, gid in enumerate(gids))


def test_global_id_of_takes_only_the_keys_of_hold_records():
    from tevo_hold.keys import KeySpace

    keys = KeySpace("p:g:q")
    for gid in ["order:g:7", "a}:g:b", "{h1}:g:", "%7D", ""]:
        record, trail, due = keys.hold(gid)
        assert keys.global_id_of(record) == gid
        assert keys.global_id_of(trail) is None and keys.global_id_of(due) is None
    assert keys.global_id_of(KeySpace("other").hold("x")[0]) is None
    assert keys.global_id_of(keys.listing("x")[0]) is None
    assert keys.global_id_of("p:g:q:{hx}:g:y") is None


def test_keys_of_one_hold_and_one_listing_share_a_hash_slot(service):
    from redis.crc import key_slot

    keys = service.ledger.keys
    for ident in WEIRD:
        listing = [*keys.listing(ident), keys.sale(ident, "g}x")]
        assert len({key_slot(k.encode()) for k in listing}) == 1
        hold = keys.hold(ident)
        assert len({key_slot(k.encode()) for k in hold}) == 1
        # the id cannot reach into the hash tag: only our own braces are in the key
        assert hold[0].count("{") == 1 and hold[0].count("}") == 1


def test_holds_spread_over_many_slots(service):
    from redis.crc import key_slot

    keys = service.ledger.keys
    slots = {key_slot(keys.hold(f"order-{i}")[0].encode()) for i in range(2000)}
    assert len(slots) > 200  # of the 256 shards: a cluster's masters all get holds


# -- a failed sale, holds made by the other path, round trips ----------------------------------


def _redis_now_ms(service: HoldService) -> float:
    """Redis's clock, in ms."""
    seconds, micros = service.ledger.client.time()
    return seconds * 1000 + micros / 1000


def _due_in_ms(service: HoldService, gid: str, kind: str) -> float:
    """How far in the future (by Redis's clock) the due item ``kind`` of ``gid`` is, in ms."""
    client = service.ledger.client
    score = client.zscore(service.ledger.keys.hold(gid)[2], kind + gid)
    assert score is not None
    seconds, micros = client.time()
    return float(score) - (seconds * 1000 + micros // 1000)


def test_invoice_of_a_listing_that_is_gone_fails_is_retried_with_backoff_and_then_sells(
    make_service, stocked
):
    # backoffs of tens of seconds, so the check of each has seconds of slack on a slow machine
    service = make_service(retry_base=20, retry_cap=50)
    hold(service)
    client = service.ledger.client
    stock_key = service.ledger.keys.listing("L1")[0]
    client.rename(stock_key, stock_key + ":away")  # the listing vanishes from the POS
    for attempt, backoff in ((1, 20_000), (2, 40_000), (3, 50_000)):  # doubled, then capped
        # kept and retried: TEvo is told the POS failed (502, retry), never that the listing is
        # gone for good (404, do not retry), which it was told before
        with pytest.raises(e.PosError, match="listing_not_found: No listing has remote_id 'L1'"):
            service.invoice(global_id="g1", tevo_order_id=5)
        h = service.get(global_id="g1")
        assert (h.status, h.invoice_attempts) == (HoldStatus.INVOICE_FAILED, attempt)
        assert backoff - 5000 < _due_in_ms(service, "g1", "i") <= backoff
        with pytest.raises(e.HoldAlreadyInvoiced):  # the buyer paid: no release now
            service.release(global_id="g1")
    client.rename(stock_key + ":away", stock_key)
    outcome = service.invoice(global_id="g1", tevo_order_id=5)
    assert outcome.hold.status is HoldStatus.INVOICED and not outcome.replayed
    assert (stocked.stock("L1").sold, stocked.stock("L1").held) == (2, 0)


@pytest.mark.parametrize("maker", ["fused", "stepwise"])
@pytest.mark.parametrize("finish", ["release", "invoice"])
def test_a_hold_made_by_either_path_is_finished_by_either(client, maker, finish):
    """A deployment may change its configuration between a hold and its release or invoice
    (or run mixed): each path finishes what the other started, and the stock stays exact."""
    from tevo_hold import Settings, build_service

    settings = Settings(redis_url="redis://unused", api_keys=("k",))
    services = {
        path: build_service(settings, client=client, fuse=path == "fused")
        for path in ("fused", "stepwise")
    }
    services["fused"].adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
    other = "stepwise" if maker == "fused" else "fused"
    hold(services[maker], qty=2)
    if finish == "release":
        assert services[other].release(global_id="g1").hold.status is HoldStatus.RELEASED
        expected = (5, 0, 0)
    else:
        outcome = services[other].invoice(global_id="g1", tevo_order_id=3)
        assert outcome.hold.status is HoldStatus.INVOICED
        expected = (3, 0, 2)
    stock = services[other].adapter.stock("L1")  # type: ignore[attr-defined]
    assert (stock.on_hand, stock.held, stock.sold) == expected
    # and the retry answers alike on both paths
    for service in services.values():
        if finish == "release":
            assert service.release(global_id="g1").replayed
        else:
            assert service.invoice(global_id="g1", tevo_order_id=3).replayed


def test_the_audit_trail_records_each_change_with_the_status_it_left(service, stocked):
    hold(service, "a")
    service.invoice(global_id="a", tevo_order_id=1)
    hold(service, "b")
    service.release(global_id="b")
    service.release(global_id="b")  # a replay changes nothing: no event
    trails = {
        gid: [(e.event, e.status, e.by) for e in service.get(global_id=gid, history=True).events]
        for gid in ("a", "b")
    }
    held = (
        [("held", "held", "api")]
        if service._fused is not None
        else [("hold_requested", "pending", "api"), ("held", "held", "api")]
    )
    assert trails["a"] == [
        *held,
        ("invoice_requested", "invoicing", "api"),
        ("invoiced", "invoiced", "api"),
    ]
    assert trails["b"] == [*held, ("released", "released", "api")]
    events = service.get(global_id="a", history=True).events
    assert events[0].at <= events[-1].at


def test_the_audit_trail_keeps_the_last_thousand_events(service, stocked):
    hold(service, "a")
    item = DueItem("l", "a")
    for n in range(1300):  # each failed POS release of the worker is an event
        service.ledger.retry_due(item, "tok", f"try {n}", retry_in=60)
    events = service.get(global_id="a", history=True).events
    assert [ev.detail for ev in events] == [f"try {n}" for n in range(300, 1300)]  # the last 1000


def test_the_audit_trail_keeps_any_text_as_it_was_written(service, stocked):
    made = hold(service, "a").hold
    item = DueItem("l", "a")
    detail = 'a "quoted" / back\\slash, \u2603 and \U0001f39f; [1, {"x": null}]\n'
    service.ledger.retry_due(item, "tok", detail, retry_in=60)
    events = service.get(global_id="a", history=True).events
    first, last = events[0], events[-1]
    assert last.detail == detail
    assert first.at == made.created_at  # to the millisecond, as the record's own times


def test_scripts_are_loaded_again_after_redis_forgets_them(service, stocked):
    """A restarted, failed-over or flushed Redis answers NOSCRIPT: the call loads the script
    (on a cluster, into every master) and goes on."""
    hold(service, "a")
    service.ledger.client.script_flush()
    assert hold(service, "b").hold.status is HoldStatus.HELD
    service.ledger.client.script_flush()
    assert service.release(global_id="a").hold.status is HoldStatus.RELEASED
    assert stocked.stock("L1").held == 2


def test_each_call_is_one_round_trip_on_the_fused_path(service, stocked):
    """Fused (reference inventory on the ledger's own Redis): hold, release and invoice each
    make one script call; step by step (or on a cluster) a hold or an invoice makes three."""
    sent: list[str] = []
    client = service.ledger.client
    original = client.execute_command

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(str(args[0]).upper())
        return original(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    try:
        calls = {}
        for n in (1, 2):  # the first time, each script is loaded into Redis too
            steps = (
                ("hold", hold, {"gid": f"a{n}", "qty": 1}),
                ("invoice", service.invoice, {"global_id": f"a{n}", "tevo_order_id": n}),
                ("hold2", hold, {"gid": f"b{n}", "qty": 1}),
                ("release", service.release, {"global_id": f"b{n}"}),
            )
            for name, call, kwargs in steps:
                sent.clear()
                if call is hold:
                    hold(service, **kwargs)
                else:
                    call(**kwargs)
                calls[name] = len(sent)
    finally:
        del client.execute_command
    fused = service._fused is not None
    assert calls == (
        {"hold": 1, "invoice": 1, "hold2": 1, "release": 1}
        if fused
        else {"hold": 3, "invoice": 3, "hold2": 3, "release": 2}
    )


def _state(client: Any, prefix: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Every key under ``prefix``, without the prefix: its type and value, with every time in
    ms since the epoch (13 digits) written as "T", so that two runs a moment apart, under two
    prefixes, compare; and apart, each key's PTTL."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return re.sub(rb"\b1\d{12}\b", b"T", value.replace(prefix.encode(), b""))
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {plain(k): plain(v) for k, v in value.items()}
        return value

    read = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"zset": lambda k: client.zrange(k, 0, -1),
    }
    values, ttls = {}, {}
    for key in client.scan_iter(match=f"{prefix}:*"):
        name, kind = key.decode().removeprefix(prefix), client.type(key)
        values[name] = (kind, plain(read[kind](key)))
        ttls[name] = int(client.pttl(key))
    return values, ttls


@pytest.mark.parametrize("client", ["fakeredis", "redis"], indirect=True)
@pytest.mark.parametrize("lapsed", [False, True], ids=["live", "lapsed"])
def test_the_one_step_invoice_leaves_what_the_three_steps_leave(client, lapsed):
    """fused.lua invoices a hold held and never invoiced before in one step (claim, sale and
    finish at once): every key, value and TTL it leaves is what the steps leave, one after
    another, as every other invoice still takes them. Also for a hold past its deadline that is
    still on the listing's books (sold: an invoice the ledger accepts never lapses)."""
    services = {}
    for prefix in ("one", "steps"):
        settings = Settings(
            redis_url="redis://unused", key_prefix=prefix, hold_ttl=0.05 if lapsed else 900
        )
        services[prefix] = build_service(settings, client=client)
        services[prefix].adapter.set_quantity("L1", 5)  # type: ignore[attr-defined]
        hold(services[prefix], "other", qty=1)
    steps = services["steps"].adapter
    script = Script(client, "fused")  # the same script, its one-step invoice switched off
    one_step = "if L and ledger.fresh_held("
    assert one_step in script._text
    script._text = script._text.replace(one_step, "if false and ledger.fresh_held(")
    script._sha = hashlib.sha1(script._text.encode()).hexdigest()
    steps._fused = script  # type: ignore[attr-defined]
    for service in services.values():
        hold(service)
    if lapsed:
        time.sleep(0.1)
    answers = {p: s.invoice(global_id="g1", tevo_order_id=7) for p, s in services.items()}
    assert answers["one"].hold.status is HoldStatus.INVOICED
    same = ("global_id", "remote_id", "quantity", "status", "tevo_order_id", "released_at")
    same += ("last_error", "invoice_attempts")
    for outcome in answers.values():
        assert not outcome.replayed
        assert outcome.hold.invoiced_at is not None
        got = {name: getattr(outcome.hold, name) for name in same}
        assert got == {name: getattr(answers["one"].hold, name) for name in same}
    (one, one_ttls), (stepwise, stepwise_ttls) = _state(client, "one"), _state(client, "steps")
    assert one == stepwise
    assert one_ttls.keys() == stepwise_ttls.keys()
    for key, ttl in one_ttls.items():  # the same TTL (-1: none), to the time between the runs
        assert abs(ttl - stepwise_ttls[key]) < 2000 and (ttl < 0) == (stepwise_ttls[key] < 0), key
    assert one[":{l:L1}"][1] == {b"on_hand": b"3", b"held": b"1", b"sold": b"2"}
    trail = [entry.event for entry in services["one"].get(global_id="g1", history=True).events]
    assert trail == ["held", "invoice_requested", "invoiced"]


# -- work owed is never lost; unknown outcomes are always compensated ------------------------------


def _ttl_ms(service: HoldService, gid: str) -> int:
    """The PTTL of the hold's record: -1 when it has none, -2 when it is gone."""
    return int(service.ledger.client.pttl(service.ledger.keys.hold(gid)[0]))


def test_a_failed_invoice_outlives_the_retention_until_it_sells(make_service, stocked):
    """The buyer has paid: however long the POS fails the invoice, its record stays (no TTL) for
    the worker and TEvo's retries; once sold, it is kept for the retention period again."""
    # the record must still be there for the invoice: it lives hold_ttl + retention (a window
    # of 0.5 s was too short for a loaded machine)
    service = make_service(hold_ttl=0.2, retention=1.0, retry_base=0.1)
    hold(service)
    assert 0 < _ttl_ms(service, "g1") <= 1200
    client = service.ledger.client
    stock_key = service.ledger.keys.listing("L1")[0]
    client.rename(stock_key, stock_key + ":away")  # the POS fails the sale
    with pytest.raises(e.PosError, match="listing_not_found"):
        service.invoice(global_id="g1", tevo_order_id=5)
    time.sleep(1.3)  # past the hold's end and its retention
    assert service.get(global_id="g1").status is HoldStatus.INVOICE_FAILED
    assert _ttl_ms(service, "g1") == -1
    client.rename(stock_key + ":away", stock_key)
    assert service.invoice(global_id="g1", tevo_order_id=5).hold.status is HoldStatus.INVOICED
    assert 0 < _ttl_ms(service, "g1") <= 1000


def test_an_invoice_refused_for_good_gives_the_record_its_ttl_back(make_service, stocked):
    service = make_service(hold_ttl=0.2, retention=60)
    hold(service)
    time.sleep(0.25)  # lapsed
    stocked.set_quantity("L1", 0)  # and its tickets are gone
    with pytest.raises(e.HoldExpired):
        service.invoice(global_id="g1", tevo_order_id=5)
    assert 50_000 < _ttl_ms(service, "g1") <= 60_000  # the retention's, less the time since


def test_the_worker_gives_back_a_lapsed_hold_s_first_invoice_whose_request_died(
    make_service, stocked
):
    """The request that claimed the first invoice of a lapsed hold died before its sale, and the
    tickets are gone: the worker's retry gives the hold back lapsed, as the request would have,
    and TEvo's retry is answered 410. It recorded a failed sale, and from then on the invoice
    was kept and retried for ever (502 to TEvo), a sale that could never be made; on the one
    script path too, whose sale the worker did not go through."""
    from tevo_hold.worker import Worker

    service = make_service(hold_ttl=0.2, lease=0.2)
    hold(service)
    time.sleep(0.25)  # lapsed
    stocked.set_quantity("L1", 0)  # and its tickets are gone
    service.ledger.claim_invoice("g1", 5, lease=0.2, token="dead")  # a request that died
    time.sleep(0.25)  # its lease ends: the worker's
    assert Worker(service, lease=5).run_once() == 1
    given_back = service.get(global_id="g1", history=True)
    assert (given_back.status, given_back.invoice_attempts) == (HoldStatus.EXPIRED, 0)
    assert given_back.events[-1].event == "invoice_refused"
    assert list(service.ledger.scheduled("i")) == []
    with pytest.raises(e.HoldExpired):
        service.invoice(global_id="g1", tevo_order_id=5)
    assert stocked.stock("L1").sold == 0


def test_a_retried_invoice_keeps_the_order_id_as_first_sent(make_service, stocked):
    """4711 and "4711" name one order; the POS saw the first spelling, and so do retries."""
    service = make_service(lease=0.2)
    hold(service)
    service.ledger.claim_invoice("g1", 4711, lease=0.2, token="dead")  # a request that died
    time.sleep(0.25)
    outcome = service.invoice(global_id="g1", tevo_order_id="4711")
    assert outcome.hold.status is HoldStatus.INVOICED
    assert outcome.hold.tevo_order_id == 4711
    assert service.invoice(global_id="g1", tevo_order_id=4711).hold.tevo_order_id == 4711


def test_a_takeover_the_pos_refuses_still_compensates_the_attempt_before(service, stocked):
    """The claim of a request that died (or timed out) is taken over by a retry, which the POS
    refuses: the first attempt may have held tickets, so the release is still owed, a lease
    from the refusal (once that attempt has landed in the POS), and a retry may take over at
    once."""
    ledger = service.ledger
    ledger.claim_hold("g1", "L1", 2, ttl=900, lease=0.1, token="dead")
    time.sleep(0.15)
    assert ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="retry").changed
    ledger.abort_hold("g1", "retry", "pos_error: refused", lease=60)
    assert ledger.get("g1").status is HoldStatus.PENDING
    assert 50_000 < _due_in_ms(service, "g1", "c") <= 60_000  # a lease from now, with slack
    assert ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="next").changed
    # a claim nobody had before leaves nothing when refused
    ledger.claim_hold("g2", "L1", 2, ttl=900, lease=10, token="first")
    ledger.abort_hold("g2", "first", "pos_error: refused", lease=5)
    with pytest.raises(e.HoldNotFound):
        ledger.get("g2")
    assert list(ledger.scheduled("c")) == ["g1"]


def test_a_started_compensation_holds_off_every_retry_until_it_is_confirmed(service, stocked):
    """Once the worker has sent the compensating release, a new POS hold could land before that
    release does and be undone by it: retries wait until the release is confirmed."""
    ledger = service.ledger
    ledger.claim_hold("g1", "L1", 2, ttl=900, lease=0.1, token="dead")
    time.sleep(0.15)
    item = DueItem("c", "g1")
    assert ledger.claim_due(item, "w", lease=5) is not None
    ledger.retry_due(item, "w", "pos_timeout: no answer", retry_in=0.05)  # it timed out
    time.sleep(0.1)  # the retry is due: the release sent may still land
    for call in (lambda: hold(service), lambda: service.release(global_id="g1")):
        with pytest.raises(e.RequestInProgress) as info:
            call()
        assert info.value.retry_after >= 1
    assert ledger.claim_due(item, "w2", lease=5) is not None
    ledger.compensated("g1", "w2")
    with pytest.raises(e.HoldNotFound):
        ledger.get("g1")
    assert hold(service).hold.status is HoldStatus.HELD  # afresh
    assert stocked.stock("L1").held == 2


def test_a_release_of_a_hold_whose_pos_call_had_no_outcome_gives_the_tickets_back(service, stocked):
    """TEvo got a 504 for its hold and releases it: the release does the compensation itself
    (no 409 until a worker comes by)."""
    claim = service.ledger.claim_hold("g1", "L1", 2, ttl=900, lease=10, token="t")
    stocked.hold(global_id="g1", remote_id="L1", quantity=2, expires_at=claim.hold.expires_at)
    service.ledger.unknown_hold("g1", "t", "pos_timeout: no answer", lease=10)
    outcome = service.release(global_id="g1")
    assert outcome.hold.status is HoldStatus.RELEASED and not outcome.replayed
    assert stocked.stock("L1").held == 0
    assert list(service.ledger.scheduled("c")) == []
    assert service.release(global_id="g1").replayed


class _LateInventory(RedisInventoryAdapter):
    """The reference inventory whose hold lands only after ``meanwhile`` ran (past the lease),
    and then, if ``fails``, raises a timeout as well."""

    meanwhile: Callable[[], None] = staticmethod(lambda: None)
    fails = False

    def hold(self, **kwargs: Any) -> None:
        self.meanwhile()
        super().hold(**kwargs)
        if self.fails:
            raise e.PosTimeout("no answer in time")


@pytest.mark.parametrize("answer", ["late", "timeout"])
@pytest.mark.parametrize("meanwhile", ["compensated", "released", "compensating"])
def test_a_hold_the_pos_answers_after_its_lease_is_released_again(client, meanwhile, answer):
    """The POS call ends after the claim's lease, and meanwhile the worker compensated the
    hold, TEvo released it, or the worker is compensating it: the tickets the call held are
    released again (by the worker), and TEvo gets a 504."""
    from tevo_hold import KeySpace, Ledger
    from tevo_hold.worker import Worker

    keys = KeySpace()
    ledger = Ledger(client, keys=keys)
    inventory = _LateInventory(client, keys=keys)
    inventory.set_quantity("L1", 5)
    service = HoldService(ledger, inventory, lease=0.1, fuse=False)
    worker = Worker(service, lease=5)
    item = DueItem("c", "g1")

    def in_the_meantime() -> None:
        time.sleep(0.15)  # the lease ends
        if meanwhile == "compensated":
            assert worker.run_once() == 1
        elif meanwhile == "released":
            service.release(global_id="g1")
        else:
            assert ledger.claim_due(item, "w", lease=5) is not None
            inventory.release(global_id="g1", remote_id="L1", quantity=2)  # sent, unconfirmed

    inventory.meanwhile = in_the_meantime  # type: ignore[method-assign]
    inventory.fails = answer == "timeout"
    with pytest.raises(e.PosTimeout, match="after its lease" if answer == "late" else "in time"):
        hold(service)
    assert inventory.stock("L1").held == 2  # the late answer's tickets
    if meanwhile == "compensating":
        ledger.compensated("g1", "w")  # the release sent before the hold landed is confirmed
    assert worker.run_once() == 1
    assert inventory.stock("L1").held == 0
    assert list(ledger.scheduled("c")) == list(ledger.scheduled("l")) == []


def test_the_audit_trail_names_a_foreign_error_by_its_type_alone():
    """What the audit trail records reaches TEvo (GET /v1/holds): an adapter's own exception may
    carry the POS's address or data in its message, which only the log gets."""
    from tevo_hold.service import describe_error

    leaky = ConnectionError("HTTPConnectionPool(host='pos.internal', port=8443): refused")
    assert describe_error(leaky) == "ConnectionError (see the log)"
    assert describe_error(e.PosTimeout("no answer")) == "pos_timeout: no answer"


@pytest.mark.parametrize("client", ["fakeredis"], indirect=True)
@pytest.mark.parametrize("name", ["hold_ttl", "lease", "retry_base", "retry_cap"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0, -1, 0.0005, 1e12])
def test_the_service_refuses_a_duration_no_setting_takes(client, name, value):
    """A service built in code was given durations its settings refuse: hold_ttl=1e12 held the
    tickets and then failed (OverflowError), with a record that could not be read back; inf and
    NaN failed each call with ValueError. The constructor refuses them, naming the argument."""
    from tevo_hold import KeySpace, Ledger

    keys = KeySpace()
    inventory = RedisInventoryAdapter(client, keys=keys)
    inventory.set_quantity("L1", 5)
    with pytest.raises(e.ConfigurationError, match=rf"\b{name}="):
        HoldService(Ledger(client, keys=keys), inventory, **{name: value})
    assert HoldService(Ledger(client, keys=keys), inventory, **{name: 0.001}).ledger


def test_a_reference_inventory_subclass_whose_invoice_keeps_the_contract_still_sells(client):
    """The step-by-step path tells the reference inventory's own invoice the hold's deadline;
    a subclass that overrides invoice with the PosAdapter arguments only (as tests/slow_pos.py
    does) failed every sale with a TypeError, answered 500."""
    from datetime import datetime

    from tevo_hold import KeySpace, Ledger

    class Counting(RedisInventoryAdapter):
        sold: list[str] = []  # noqa: RUF012

        def invoice(
            self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
        ) -> None:
            self.sold.append(global_id)
            super().invoice(
                global_id=global_id,
                remote_id=remote_id,
                quantity=quantity,
                tevo_order_id=tevo_order_id,
            )

    keys = KeySpace()
    inventory = Counting(client, keys=keys)
    inventory.set_quantity("L1", 5)
    service = HoldService(Ledger(client, keys=keys), inventory, fuse=False)
    service.hold(remote_id="L1", quantity=2, global_id="g1")
    sold = service.invoice(global_id="g1", tevo_order_id=4711).hold
    assert sold.status is HoldStatus.INVOICED and Counting.sold == ["g1"]
    assert inventory.stock("L1").sold == 2
    assert isinstance(sold.expires_at, datetime)


def test_a_service_closes_its_adapter_and_clients_as_a_context_manager():
    """A script or a task builds a service and must close it: ``with`` raised TypeError."""

    class Closing(RedisInventoryAdapter):
        closed = 0

        def close(self) -> None:
            Closing.closed += 1

    service = build_service(Settings())
    service.adapter = Closing(service.ledger.client)
    with pytest.raises(RuntimeError, match="inside"), service as used:
        assert used is service
        assert used.hold(remote_id="demo-1", quantity=1, global_id="g").hold.quantity == 1
        raise RuntimeError("inside: an error is not swallowed")
    assert Closing.closed == 1
