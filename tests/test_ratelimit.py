"""Rate limits per API key (charged in the calls' own scripts), through the Flask app.

On fakeredis, a real redis-server and a real cluster (where the charge is a call of its own), on
the fused and the step-by-step paths. The limit shared by several gunicorn workers is in
test_operations.py.
"""

from __future__ import annotations

import importlib.resources
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from werkzeug.test import TestResponse

from tevo_hold import HoldService, Settings, create_app, metrics
from tevo_hold.connection import RedisClient
from tevo_hold.errors import ConfigurationError
from tevo_hold.keys import KeySpace
from tevo_hold.ratelimit import Limit, Limits, parse
from tevo_hold.web import EXTENSION_KEY

KEYS = "key-a,key-b"


def make_app(service: HoldService, limit: str = "3 per minute") -> FlaskClient:
    service.adapter.set_quantity("L1", 100)  # type: ignore[attr-defined]
    config = {"TEVO_HOLD_API_KEYS": KEYS, "TEVO_HOLD_RATE_LIMIT": limit, "TESTING": True}
    return create_app(config, service=service).test_client()


def hold(http: FlaskClient, gid: str, key: str = "key-a") -> TestResponse:
    body = {"remote_id": "L1", "quantity": 1, "global_id": gid}
    return http.post("/v1/holds", json=body, headers={"X-API-Key": key})


def assert_rate_limited(
    resp: TestResponse, limit: str = "3 per 1 minute", within: int = 60
) -> dict[str, Any]:
    assert resp.status_code == 429, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body: dict[str, Any] = resp.json or {}
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert body["limit"] == limit
    assert 1 <= int(resp.headers["Retry-After"]) <= within
    return body


def test_the_request_over_the_limit_is_429_with_retry_after_and_changes_nothing(
    service: HoldService,
) -> None:
    http = make_app(service)
    for n in range(3):
        assert hold(http, f"g{n}").status_code == 201
    assert_rate_limited(hold(http, "g3"))
    assert service.adapter.stock("L1").held == 3  # type: ignore[attr-defined]
    assert http.get("/v1/holds/g3", headers={"X-API-Key": "key-b"}).status_code == 404


def test_each_key_has_its_own_budget(service: HoldService) -> None:
    http = make_app(service)
    for n in range(3):
        assert hold(http, f"a{n}", key="key-a").status_code == 201
    assert_rate_limited(hold(http, "a3", key="key-a"))
    for n in range(3):
        assert hold(http, f"b{n}", key="key-b").status_code == 201


def test_every_api_call_of_a_key_but_invoices_draws_on_one_budget(service: HoldService) -> None:
    http = make_app(service)
    key = {"X-API-Key": "key-a"}
    assert hold(http, "g1").status_code == 201
    assert http.get("/v1/holds/g1", headers=key).status_code == 200
    assert http.post("/v1/releases", json={"global_id": "g1"}, headers=key).status_code == 200
    assert_rate_limited(hold(http, "g2"))


def test_a_holds_first_invoice_is_never_refused_by_the_limit(service: HoldService) -> None:
    """Its buyer has paid: refused, the hold would lapse and its tickets go back on sale, with
    no trace of the sale (TEvo promises one invoice call, not a retry)."""
    http = make_app(service)
    key = {"X-API-Key": "key-a"}
    for n in range(3):
        assert hold(http, f"g{n}").status_code == 201
    assert_rate_limited(hold(http, "g3"))
    for n in range(3):
        body = {"global_id": f"g{n}", "tevo_order_id": 4711 + n}
        assert http.post("/v1/invoices", json=body, headers=key).status_code == 201
    assert service.adapter.stock("L1").sold == 3  # type: ignore[attr-defined]
    assert_rate_limited(hold(http, "g3"))


def test_other_invoices_over_the_limit_are_refused(service: HoldService) -> None:
    """A client stuck retrying (a sold hold, an unknown global_id, a released hold) must not
    get past the budget: with invoices left out of it, a retry storm of a failed invoice
    called a failing POS once per request."""
    http = make_app(service)
    key = {"X-API-Key": "key-a"}
    assert hold(http, "g0").status_code == 201
    assert hold(http, "g1").status_code == 201
    assert http.post("/v1/releases", json={"global_id": "g1"}, headers=key).status_code == 200
    assert_rate_limited(hold(http, "g2"))
    sold = {"global_id": "g0", "tevo_order_id": 4711}
    assert http.post("/v1/invoices", json=sold, headers=key).status_code == 201  # its first
    for body in (
        sold,  # a replay of a sale
        {"global_id": "g1", "tevo_order_id": 4712},  # a released hold
        {"global_id": "nothing", "tevo_order_id": 4713},  # an unknown global_id
    ):
        assert_rate_limited(http.post("/v1/invoices", json=body, headers=key))
    assert service.adapter.stock("L1").sold == 1  # type: ignore[attr-defined]


def test_a_lapsed_holds_refused_first_invoice_is_its_only_one_past_the_budget(
    service: HoldService,
) -> None:
    """A lapsed hold whose tickets are gone answers its first invoice 410 and is given back as
    it was: judged by its fields alone, every invoice after it was a 'first' again, and got
    past the budget to ask the inventory (or a vendor's POS) once more."""
    quick = HoldService(service.ledger, service.adapter, hold_ttl=0.05)
    http = make_app(quick)
    key = {"X-API-Key": "key-a"}
    body = {"remote_id": "L1", "quantity": 100, "global_id": "g"}
    assert http.post("/v1/holds", json=body, headers=key).status_code == 201
    time.sleep(0.1)  # it lapses
    body = {"remote_id": "L1", "quantity": 100, "global_id": "other"}
    assert http.post("/v1/holds", json=body, headers=key).status_code == 201  # takes them all
    assert http.get("/v1/holds/g", headers=key).status_code == 200  # the budget is spent
    assert_rate_limited(hold(http, "g3"))
    first = http.post("/v1/invoices", json={"global_id": "g", "tevo_order_id": 1}, headers=key)
    assert first.status_code == 410, first.json
    for order in (1, 2, 3):
        again = {"global_id": "g", "tevo_order_id": order}
        assert_rate_limited(http.post("/v1/invoices", json=again, headers=key))


def test_apps_on_one_redis_share_the_budget(service: HoldService) -> None:
    first, second = make_app(service), make_app(service)
    assert hold(first, "g1").status_code == 201
    assert hold(second, "g2").status_code == 201
    assert hold(first, "g3").status_code == 201
    assert_rate_limited(hold(second, "g4"))


def test_public_endpoints_and_bad_keys_are_not_limited(service: HoldService) -> None:
    http = make_app(service, "1 per minute")
    assert hold(http, "g1").status_code == 201
    assert_rate_limited(hold(http, "g2"), "1 per 1 minute")
    for _ in range(5):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(path).status_code == 200, path
        assert hold(http, "g3", key="wrong").status_code == 401


def test_off_means_no_limit(service: HoldService) -> None:
    http = make_app(service, "off")
    assert http.application.extensions[EXTENSION_KEY].limits is None
    for n in range(20):
        assert hold(http, f"g{n}").status_code == 201


def test_the_budget_refills_at_its_rate(service: HoldService) -> None:
    # One call back every 1.5 s: the refusals below need the calls before them made within
    # that (with "2 per second", half a second, a busy machine let the budget refill first).
    http = make_app(service, "2 per 3 seconds")
    assert [hold(http, f"g{n}").status_code for n in range(2)] == [201, 201]
    body = assert_rate_limited(hold(http, "g2"), "2 per 3 second")
    assert re.search(r"retry in [12] s", body["detail"]), body["detail"]
    time.sleep(1.55)  # one call every 1.5 s comes back
    assert hold(http, "g2").status_code == 201
    assert_rate_limited(hold(http, "g3"), "2 per 3 second")


def test_every_limit_of_several_holds(service: HoldService) -> None:
    http = make_app(service, "100/second; 2 per hour")
    assert hold(http, "g1").status_code == 201
    assert hold(http, "g2").status_code == 201
    over = hold(http, "g3")
    assert_rate_limited(over, "2 per 1 hour", within=3600)
    assert int(over.headers["Retry-After"]) >= 1700  # the next of 2 per hour: in half an hour


def test_with_several_limits_spent_the_answer_is_the_longest_wait(service: HoldService) -> None:
    """Retry-After is "seconds until a call fits again": with both limits spent, that is the
    minute's wait, not the second's (a client obeying the shorter one is refused again)."""
    http = make_app(service, "1 per second; 1 per minute")
    assert hold(http, "g1").status_code == 201
    over = hold(http, "g2")
    assert_rate_limited(over, "1 per 1 minute")
    assert int(over.headers["Retry-After"]) >= 59


def test_a_holds_first_invoice_sold_past_the_budget_counts_one_outcome(
    service: HoldService,
) -> None:
    """tevo_hold_invoices_total counts one outcome per invoice call: the sale, not also the
    refusal that create_invoice got past. Another invoice refused counts rate_limited once."""
    http = make_app(service, "1 per minute")
    key = {"X-API-Key": "key-a"}

    def counts() -> tuple[float, float]:
        metrics.flush()
        invoiced, limited = (
            REGISTRY.get_sample_value("tevo_hold_invoices_total", {"outcome": outcome}) or 0.0
            for outcome in ("invoiced", "rate_limited")
        )
        return invoiced, limited

    assert hold(http, "g1").status_code == 201
    before = counts()
    body = {"global_id": "g1", "tevo_order_id": 7}
    assert http.post("/v1/invoices", json=body, headers=key).status_code == 201
    sold = counts()
    assert (sold[0] - before[0], sold[1] - before[1]) == (1, 0)
    assert_rate_limited(http.post("/v1/invoices", json=body, headers=key), "1 per 1 minute")
    replayed = counts()
    assert (replayed[0] - sold[0], replayed[1] - sold[1]) == (0, 1)


def test_requests_refused_before_redis_are_not_charged(service: HoldService) -> None:
    http = make_app(service, "2 per minute")
    for _ in range(5):
        bad = http.post("/v1/holds", json={"quantity": "x"}, headers={"X-API-Key": "key-a"})
        assert bad.status_code == 400
    assert [hold(http, f"g{n}").status_code for n in range(3)] == [201, 201, 429]


def test_a_refused_call_runs_nothing_even_a_replay(service: HoldService) -> None:
    http = make_app(service, "1 per minute")
    assert hold(http, "g1").status_code == 201
    assert_rate_limited(hold(http, "g1"), "1 per 1 minute")  # even the retry of a done hold
    release = http.post("/v1/releases", json={"global_id": "g1"}, headers={"X-API-Key": "key-a"})
    assert_rate_limited(release, "1 per 1 minute")
    assert service.get(global_id="g1").status == "held"


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("600 per minute", (Limit(600, 1, "minute"),)),
        ("20/second; 1000 per hour", (Limit(20, 1, "second"), Limit(1000, 1, "hour"))),
        ("5 per 2 Hours, 9/day", (Limit(5, 2, "hour"), Limit(9, 1, "day"))),
        (" 7 / 30 seconds ", (Limit(7, 30, "second"),)),
    ],
)
def test_limits_are_read_from_their_notation(text: str, limits: tuple[Limit, ...]) -> None:
    assert parse(text) == limits
    assert str(limits[0]).startswith(f"{limits[0].amount} per {limits[0].count} ")


@pytest.mark.parametrize("text", ["lots per minute", "5 per fortnight", "0 per second", ";", ""])
def test_unreadable_limits_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        parse(text)


@pytest.mark.parametrize(
    "text", ["1 per 366 days", "1 per 10000000000 days", "1000000001/second", "5/s; 1 per 53 weeks"]
)
def test_limits_too_large_to_work_are_refused_at_start_up(text: str) -> None:
    """A period whose ms Lua would write in exponent notation made the charge's SET fail, and
    the limit was silently off (or the first call was refused, through float rounding)."""
    with pytest.raises(ConfigurationError, match="TEVO_HOLD_RATE_LIMIT"):
        Settings.from_env({"TEVO_HOLD_RATE_LIMIT": text, "TEVO_HOLD_API_KEYS": "k"})


# -- the GCRA itself, on a clock of the test's own ---------------------------------------------


#: The charge of the version before 96b07cb (fractional ms, '%.3f'), as a process of that version
#: still runs it against the same Redis during a rolling deploy.
EARLIER_CHARGE = """
if ARGV[1] == '!charge' then
  local n, first = tonumber(ARGV[2]), #KEYS - tonumber(ARGV[2])
  local tats, steps = {}, {}
  local refusal = nil
  for i = 1, n do
    local amount, period = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local step = period / amount
    local tat = math.max(tonumber(redis.call('GET', KEYS[first + i])) or now, now)
    local allowed_at = tat + step - period
    if now < allowed_at and not refusal then
      refusal = {'rate_limited', now, math.ceil(allowed_at - now), i}
    end
    tats[i], steps[i] = tat, step
  end
  if refusal then return refusal end
  for i = 1, n do
    local tat = tats[i] + steps[i]
    redis.pcall('SET', KEYS[first + i], string.format('%.3f', tat), 'PX', math.ceil(tat - now))
  end
  for _ = 1, n do table.remove(KEYS) end
  for _ = 1, 2 + 2 * n do table.remove(ARGV, 1) end
end
"""


def clocked(
    client: RedisClient, text: str, charge_lua: str | None = None
) -> Callable[[int], tuple[int, str | None]]:
    """Charge one call of key ``k`` under the limits ``text`` at ``now`` (ms): _charge.lua (or
    ``charge_lua``) as every script runs it, with the clock given rather than read from Redis.
    Answers 0 and None if the call passes, else the ms it is told to wait and the limit it
    names."""
    lua = importlib.resources.files("tevo_hold").joinpath("lua")
    charge_text = charge_lua or lua.joinpath("_charge.lua").read_text("utf-8")
    script = "\n".join(
        [
            "local now = tonumber(table.remove(ARGV))",
            charge_text,
            lua.joinpath("charge.lua").read_text("utf-8"),
        ]
    )
    limits = parse(text)
    charge = Limits(limits, KeySpace()).charge("k")

    def at(now: int) -> tuple[int, str | None]:
        reply = client.eval(script, len(charge.keys), *charge.keys, *charge.argv, now)
        if reply[0] in (b"ok", "ok"):
            return 0, None
        return int(reply[2]), charge.names[int(reply[3]) - 1]

    return at


T0 = 1_760_000_000_123  # a time in ms, as Redis's clock gives it


@pytest.mark.parametrize(
    "text",
    ["3 per 2 seconds", "7 per 1 day", "9 per 1 minute", "12 per 5 seconds", "500 per 365 days"],
)
def test_a_burst_of_the_amount_passes_at_once_and_the_next_call_waits_a_step(
    client: RedisClient, text: str
) -> None:
    """Up to N calls at once (in the same millisecond: float rounding used to refuse the Nth),
    then one every period / N: the N+1th waits one step, to the millisecond."""
    [limit] = parse(text)
    charge = clocked(client, text)
    assert [charge(T0) for _ in range(limit.amount)] == [(0, None)] * limit.amount
    wait, name = charge(T0)
    step = limit.period_ms / limit.amount
    assert (wait, name) == (-(-limit.period_ms // limit.amount), str(limit))  # ceil(step)
    assert charge(T0 + wait - 1)[0] == 1
    assert charge(T0 + wait) == (0, None)
    assert wait - 1 < step <= wait


@pytest.mark.parametrize("text", ["7 per 1 hour", "3 per 2 hours", "10 per 1 day"])
def test_over_a_long_run_a_key_gets_n_per_period_and_any_period_at_most_2n_less_1(
    client: RedisClient, text: str
) -> None:
    """A client that calls as soon as it is told it may (Retry-After to the millisecond), for
    forty periods: a burst of N at once, then one call every period / N. Any window of one
    period holds at most 2N - 1 calls (the burst and the steady rate after it: the bound is
    reached), and the total is within N of N per period."""
    [limit] = parse(text)
    n, period = limit.amount, limit.period_ms
    charge = clocked(client, text)
    now, passed = T0, []
    while now < T0 + 40 * period:
        wait, _ = charge(now)
        if wait == 0:
            passed.append(now)
            continue
        assert charge(now + wait - 1)[0] == 1  # the wait is no shorter than it must be
        now += wait
    most = max(sum(1 for t in passed if start <= t < start + period) for start in passed)
    assert most == 2 * n - 1
    steady = (now - T0) * n / period
    assert steady <= len(passed) <= steady + n


def test_several_limits_answer_the_longest_wait_and_a_call_then_fits(client: RedisClient) -> None:
    charge = clocked(client, "1 per second; 2 per minute; 1 per 2 seconds")
    assert charge(T0) == (0, None)
    assert charge(T0 + 2000) == (0, None)  # the minute's 2 are spent
    wait, name = charge(T0 + 2000)
    assert (wait, name) == (28_000, "2 per 1 minute")  # the next of 2 a minute: 30 s on
    assert charge(T0 + 2000 + wait - 1)[0] == 1
    assert charge(T0 + 2000 + wait) == (0, None)


@pytest.mark.parametrize("amount", [1, 2, 7])
def test_the_longest_period_charges_every_call(client: RedisClient, amount: int) -> None:
    """At the bound the arithmetic is exact and the charge is written (a PX Redis takes)."""
    text = f"{amount} per 365 days"
    [limit] = parse(text)
    charge = clocked(client, text)
    assert [charge(T0) for _ in range(amount)] == [(0, None)] * amount
    assert charge(T0) == (-(-limit.period_ms // amount), str(limit))
    [key] = Limits((limit,), KeySpace()).charge("k").keys
    assert limit.period_ms - 60_000 < client.pttl(key) <= limit.period_ms


@pytest.mark.parametrize("first", ["this version", "the earlier one"])
def test_in_a_rolling_deploy_both_versions_keep_one_budget(client: RedisClient, first: str) -> None:
    """Old and new processes share one Redis during a deploy: each reads what the other wrote
    as the key's budget spent, so a burst spread over both versions gets the amount, not twice
    it. (The exact 'ms:frac' of 96b07cb read as no call at all by the earlier version.)"""
    now_ = clocked(client, "10 per minute")
    then = clocked(client, "10 per minute", EARLIER_CHARGE)
    order = (now_, then) if first == "this version" else (then, now_)
    passed = [order[i >= 15](T0 + i)[0] == 0 for i in range(30)]
    assert sum(passed) == 10, passed
    # then one call every 6 s, whichever version takes it
    assert order[1](T0 + 6_010)[0] == 0
    assert order[0](T0 + 6_020)[0] > 0
    assert order[0](T0 + 12_010)[0] == 0
