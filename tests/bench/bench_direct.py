"""The library without HTTP: calls per second from one Python thread, and round trips per call.

Each call is timed on its own (``time.perf_counter_ns``), one after the other, from one thread on
one redis-py client (built by :func:`tevo_hold.connection.connect`, as the server builds it),
against a private redis-server. The reference is redis-py's own round trip on the same client in
the same run: PING, and one EVALSHA of the floor's trivial script. The kinds of call take turns
in blocks, so a slow spell of the machine hits all of them alike. Round trips are counted twice:
on the client (commands redis-py sent) and on the server (calls of EVAL/EVALSHA in ``INFO
commandstats``); the other commandstats are the commands the scripts ran inside Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from tevo_hold import HoldService, Settings, build_service
from tevo_hold.connection import connect

from .common import API_KEY, FLOOR_SCRIPT
from .stats import Op, SentCounter, interleave

LISTINGS = 1000
STOCK = 10**9
BLOCK = 50


def settings_for(url: str, *, hold_ttl: float = 3600) -> Settings:
    return Settings(redis_url=url, api_keys=(API_KEY,), hold_ttl=hold_ttl)


def stock_listings(service: HoldService, prefix: str, count: int, quantity: int) -> None:
    adapter: Any = service.adapter
    for i in range(count):
        adapter.set_quantity(f"{prefix}{i}", quantity)


def run(url: str, *, holds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The direct benchmark on the Redis at ``url`` (flushed first): ``holds`` holds per path."""
    client = connect(settings_for(url))
    probe = redis.Redis.from_url(url)
    probe.flushall()
    counter = SentCounter(client)
    floor = client.register_script(FLOOR_SCRIPT)
    services = {
        "fused": build_service(settings_for(url), client=client, fuse=True),
        "stepwise": build_service(settings_for(url), client=client, fuse=False),
    }
    stock_listings(services["fused"], "dl-", LISTINGS, STOCK)
    for i in range(300):  # warm-up: connection, script caches
        client.ping()
        floor(keys=[f"warm:{i}"], args=[i])
        for mode, service in services.items():
            service.hold(remote_id=f"dl-{i % LISTINGS}", quantity=1, global_id=f"w-{mode}-{i}")

    def evalsha(i: int) -> None:
        floor(keys=[f"ref:{i}"], args=[i])

    def hold_op(mode: str) -> Op:
        service = services[mode]

        def hold(i: int) -> None:
            service.hold(remote_id=f"dl-{i % LISTINGS}", quantity=1, global_id=f"d-{mode}-{i}")

        return Op(hold, range(holds))

    def release_op(mode: str) -> Op:
        service = services[mode]
        return Op(lambda i: service.release(global_id=f"d-{mode}-{i}"), range(holds // 2))

    def invoice_op(mode: str) -> Op:
        service = services[mode]
        return Op(
            lambda i: service.invoice(global_id=f"d-{mode}-{i}", tevo_order_id=i),
            range(holds // 2, holds),
        )

    first = interleave(
        {
            "ping": Op(lambda i: client.ping(), range(holds)),
            "evalsha": Op(evalsha, range(holds)),
            "hold_fused": hold_op("fused"),
            "hold_stepwise": hold_op("stepwise"),
        },
        BLOCK,
        counter,
        probe,
    )
    second = interleave(
        {
            "evalsha": Op(evalsha, range(holds, holds + holds // 2)),
            "release_fused": release_op("fused"),
            "release_stepwise": release_op("stepwise"),
            "invoice_fused": invoice_op("fused"),
            "invoice_stepwise": invoice_op("stepwise"),
        },
        BLOCK,
        counter,
        probe,
    )
    results: dict[str, Any] = {"holds": holds, "listings": LISTINGS, "block": BLOCK}
    results["ping"] = first["ping"]
    results["evalsha"] = first["evalsha"]
    results["evalsha_2"] = second["evalsha"]
    for mode in services:
        results[mode] = {
            "hold": first[f"hold_{mode}"],
            "release": second[f"release_{mode}"],
            "invoice": second[f"invoice_{mode}"],
        }
    log(
        f"  redis-py PING {results['ping']['rate']:,.0f}/s, "
        f"EVALSHA {results['evalsha']['rate']:,.0f}/s then {results['evalsha_2']['rate']:,.0f}/s"
    )
    for mode in services:
        log(
            f"  {mode}: "
            + ", ".join(
                f"{op} {r['rate']:,.0f}/s ({r['round_trips_server']:.2f} round trips)"
                for op, r in results[mode].items()
            )
        )
    probe.close()
    client.close()
    return results
