"""The HTTP API under gunicorn and concurrent load, side by side with the floor app.

The servers run at once on one private redis-server, with the project's gunicorn config and the
same worker and thread counts (tevo-hold twice: with its rate limiter at work, and with it off);
wrk (a fixed number of keep-alive connections) loads one of them at a time, for a fixed time per
run. A round runs holds spread over many listings (then the same without rate limit), holds on
one hot listing of 100 tickets, holds on one listing with stock for all, releases and invoices,
with a run of the floor before and after each: each run's ratio is its rate over the mean of the
two floor runs around it, so a slow spell of the shared machine weighs on both sides. Then come
paired runs of hold, release and invoice: wrk loads tevo-hold and the floor at the same time, so
both meet the very same spells, and the ratio of their server CPU per request over the same
seconds is the steadiest measure of what tevo-hold costs over the floor. Every request
carries a global_id of its own (``wrk_api.lua``); releases and invoices each target a hold of
their own, stored beforehand with the library's script calls (:mod:`.fill`). The CPU that each
server's processes, Redis and wrk use during a run is read from /proc, and so is how wrk's
connections are spread over each server's workers (in mid-run).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tests.servers import worker_sockets
from tevo_hold import KeySpace, RedisInventoryAdapter, Settings
from tevo_hold.connection import connect

from .common import API_KEY
from .fill import store_holds
from .servers import CpuMeter, WrkResult, gunicorn_app, run_wrk
from .stats import SCRIPT_COMMANDS, commandstats

LISTINGS = 1000
STOCK = 10**9
HOT_STOCK = 100
#: The kinds of run (each of ours runs between two runs of the floor).
ENDPOINTS = ("floor", "hold", "nolimit", "hot", "one", "release", "invoice")
#: The kinds of run that also run paired with the floor (both loaded at once).
PAIRED = ("hold", "release", "invoice")
#: tevo-hold's rate limit during the benchmark: the limiter at work, with a budget the load never
#: spends (the default, 600 per minute, would refuse nearly every request).
RATE_LIMIT = "1000000 per minute"


def _wrk_summary(r: WrkResult) -> dict[str, Any]:
    return {
        "rps": r.rps,
        "requests": r.requests,
        "duration_s": r.duration_s,
        "p50_ms": r.pct_ms(50),
        "p99_ms": r.pct_ms(99),
        "percentiles_ms": {p: v / 1000 for p, v in r.latency_us["percentiles"].items()},
        "statuses": r.statuses,
        "socket_errors": r.socket_errors,
        "sent_per_thread": r.sent_per_thread,
    }


def _connections_later(url: str, pid: int, after: float) -> Callable[[], list[int]]:
    """Count, ``after`` seconds from now (mid-run), the connections that each worker of the server
    at ``url`` (master ``pid``) holds; the call returned waits for the counts (sorted).

    A worker with none would mean the other workers carried the run alone (gunicorn.conf.py's
    reuse_port is what spreads them).
    """
    port = int(url.rsplit(":", 1)[1])
    counts: list[int] = []

    def read() -> None:
        counts.extend(sorted(len(s) for s in worker_sockets(pid, port, "established").values()))

    timer = threading.Timer(after, read)
    timer.start()

    def result() -> list[int]:
        timer.join()
        return counts

    return result


def run(
    redis_url: str,
    *,
    rounds: int,
    duration: float,
    connections: int,
    wrk_threads: int,
    workers: int,
    threads: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url, api_keys=(API_KEY,))
    probe = redis.Redis.from_url(redis_url)
    probe.flushall()
    client = connect(settings)
    adapter = RedisInventoryAdapter(client, keys=KeySpace(settings.key_prefix))
    for i in range(LISTINGS):
        adapter.set_quantity(f"hl-{i}", STOCK)
    env = {"TEVO_HOLD_REDIS_URL": redis_url, "TEVO_HOLD_API_KEYS": API_KEY}
    limited = {**env, "TEVO_HOLD_RATE_LIMIT": RATE_LIMIT}
    unlimited = {**env, "TEVO_HOLD_RATE_LIMIT": "off"}
    anomalies: list[str] = []
    runs: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []

    redis_pid = int(probe.info("server")["process_id"])
    app, floor_app = "server.wsgi:app", "tests.bench.floor_app:app"
    with (
        gunicorn_app(app, limited, workers=workers, threads=threads) as (ours, ours_pid),
        gunicorn_app(app, unlimited, workers=workers, threads=threads) as (free, free_pid),
        gunicorn_app(floor_app, env, workers=workers, threads=threads) as (floor, floor_pid),
    ):
        masters = {ours: ours_pid, free: free_pid, floor: floor_pid}
        meter = CpuMeter({**masters, "redis": redis_pid})
        cpu: dict[str, float] = {}
        spread: dict[str, list[int]] = {}

        def wrk(url: str, *args: str | int, seconds: float = duration) -> WrkResult:
            calls0 = commandstats(probe)
            connections_now = _connections_later(url, masters[url], seconds / 2)
            meter.start()
            result = run_wrk(
                url,
                [str(a) for a in args],
                duration=seconds,
                connections=connections,
                threads=wrk_threads,
            )
            used = meter.stop()
            spread["last"] = connections_now()
            calls1 = commandstats(probe)
            scripts = sum(
                calls1[k][0] - calls0.get(k, (0, 0))[0] for k in calls1 if k in SCRIPT_COMMANDS
            )
            ms = 1000 / max(result.requests, 1)
            ours_and_wrk = used[ours] + used[free] + used[floor] + used["redis"] + used["wrk"]
            cpu.clear()
            cpu.update(
                {
                    "server_ms": used[url] * ms,
                    "redis_ms": used["redis"] * ms,
                    "wrk_ms": used["wrk"] * ms,
                    # script calls that reached Redis per answered request (requests still in
                    # flight when wrk stops make this a shade high)
                    "round_trips": scripts / max(result.requests, 1),
                    "machine_busy": used["machine_busy"] / used["machine_total"],
                    "others": max(0.0, used["machine_busy"] - ours_and_wrk) / used["machine_total"],
                }
            )
            return result

        # warm-up: imports, connections, script caches, in every worker
        wrk(floor, "floor", "warm", "hl", LISTINGS, API_KEY, seconds=3)
        warm = wrk(ours, "hold", "warm", "hl", LISTINGS, API_KEY, seconds=3)
        # holds for each round's releases and invoices, up to four times the warm-up's hold
        # rate (no run asks for more than it stores: an extra request would answer 404)
        per_thread = int(4 * max(warm.sent_per_thread) * duration / 3) + 1000
        wrk(free, "hold", "warmfree", "hl", LISTINGS, API_KEY, seconds=3)

        def precreate(prefix: str, per_thread: int) -> None:
            pairs = (
                (f"{prefix}-{t}-{n}", f"hl-{(n + t * 7919) % LISTINGS}")
                for t in range(wrk_threads)
                for n in range(per_thread)
            )
            store_holds(client, pairs, settings)

        def record(rnd: int, name: str, r: WrkResult, expected: int) -> dict[str, Any]:
            row = {
                "round": rnd,
                "endpoint": name,
                **_wrk_summary(r),
                "cpu": dict(cpu),
                "connections_per_worker": spread["last"],
            }
            runs.append(row)
            _check_spread(f"round {rnd} {name}", spread["last"])
            odd = {s: c for s, c in r.statuses.items() if s != expected}
            if name != "hot" and (odd or r.socket_errors):
                anomalies.append(
                    f"round {rnd} {name}: {odd or ''} {r.socket_errors} socket errors".strip()
                )
            log(
                f"  round {rnd} {name:8} {r.rps:8,.0f} req/s  p50 {r.pct_ms(50):6.1f} ms  "
                f"p99 {r.pct_ms(99):6.1f} ms  CPU/req: server {cpu['server_ms']:.2f} ms, "
                f"redis {cpu['redis_ms']:.3f} ms, wrk {cpu['wrk_ms']:.3f} ms; "
                f"others {cpu['others']:.0%}  {dict(sorted(r.statuses.items()))}"
            )
            return row

        def _check_spread(what: str, counts: list[int]) -> None:
            if len(counts) != workers or min(counts) == 0:
                anomalies.append(f"{what}: connections per worker {counts}")

        hot_checks: list[dict[str, Any]] = []
        floors = iter(range(10**6))

        def paired(rnd: int, name: str, mode: str, prefix: str, expected: int) -> None:
            """wrk on tevo-hold and on the floor at once; each server's CPU per request."""
            results: dict[str, WrkResult] = {}

            def load(side: str, url: str, args: tuple[str | int, ...]) -> None:
                results[side] = run_wrk(
                    url,
                    [str(a) for a in args],
                    duration=duration,
                    connections=connections,
                    threads=wrk_threads,
                )

            loads = [
                threading.Thread(
                    target=load, args=("ours", ours, (mode, prefix, "hl", LISTINGS, API_KEY))
                ),
                threading.Thread(
                    target=load,
                    args=("floor", floor, ("floor", f"p{prefix}", "hl", LISTINGS, API_KEY)),
                ),
            ]
            split = {
                url: _connections_later(url, masters[url], duration / 2) for url in (ours, floor)
            }
            meter.start()
            for t in loads:
                t.start()
            for t in loads:
                t.join()
            used = meter.stop()
            mine, base = results["ours"], results["floor"]
            row = {
                "round": rnd,
                "endpoint": name,
                "ours": {**_wrk_summary(mine), "connections_per_worker": split[ours]()},
                "floor": {**_wrk_summary(base), "connections_per_worker": split[floor]()},
                "ours_cpu_ms": used[ours] * 1000 / max(mine.requests, 1),
                "floor_cpu_ms": used[floor] * 1000 / max(base.requests, 1),
            }
            row["cpu_ratio"] = row["floor_cpu_ms"] / row["ours_cpu_ms"]
            pairs.append(row)
            for side in ("ours", "floor"):
                _check_spread(
                    f"round {rnd} paired {name} ({side})", row[side]["connections_per_worker"]
                )
            odd = {s: c for s, c in mine.statuses.items() if s != expected}
            if odd or mine.socket_errors or base.socket_errors:
                anomalies.append(f"round {rnd} paired {name}: {odd or ''} socket errors".strip())
            log(
                f"  round {rnd} paired {name:8} ours {mine.rps:7,.0f} req/s, floor "
                f"{base.rps:7,.0f} req/s at once; server CPU/req ours {row['ours_cpu_ms']:.2f} ms, "
                f"floor {row['floor_cpu_ms']:.2f} ms: x floor by CPU {row['cpu_ratio']:.2f}"
            )

        def floor_run(rnd: int) -> None:
            tag = f"f{rnd}-{next(floors)}"
            record(rnd, "floor", wrk(floor, "floor", tag, "hl", LISTINGS, API_KEY), 201)

        for rnd in range(1, rounds + 1):
            # stored first, so that Redis has done with this burst of writes before the round's
            # first measured run, rather than just before the releases'
            precreate(f"rel{rnd}", per_thread)
            precreate(f"inv{rnd}", per_thread)
            time.sleep(1)
            # every run of ours lies between two runs of the floor: its ratio is taken against
            # those two, a few seconds apart, so that a slow spell of the shared machine weighs
            # on both sides
            floor_run(rnd)
            record(rnd, "hold", wrk(ours, "hold", f"h{rnd}", "hl", LISTINGS, API_KEY), 201)
            floor_run(rnd)
            record(rnd, "nolimit", wrk(free, "hold", f"n{rnd}", "hl", LISTINGS, API_KEY), 201)
            floor_run(rnd)

            hot_rid = f"hot{rnd}-0"
            adapter.set_quantity(hot_rid, HOT_STOCK)
            hot = record(rnd, "hot", wrk(ours, "hold", f"x{rnd}", f"hot{rnd}", 1, API_KEY), 201)
            stock = adapter.stock(hot_rid)
            check = {
                "round": rnd,
                "requests": hot["requests"],
                "won": hot["statuses"].get(201, 0),
                "refused": hot["statuses"].get(409, 0),
                "other": {s: c for s, c in hot["statuses"].items() if s not in (201, 409)},
                "stock_held": stock.held,
                "stock_available": stock.available,
                "ok": hot["statuses"].get(201, 0) == HOT_STOCK
                and stock.held == HOT_STOCK
                and stock.available == 0
                and set(hot["statuses"]) <= {201, 409},
            }
            hot_checks.append(check)
            if not check["ok"]:
                anomalies.append(f"round {rnd} hot listing: {check}")
            floor_run(rnd)

            # the same load on one listing with stock for all: contention without refusals
            adapter.set_quantity(f"one{rnd}-0", STOCK)
            record(rnd, "one", wrk(ours, "hold", f"o{rnd}", f"one{rnd}", 1, API_KEY), 201)

            floor_run(rnd)
            record(rnd, "release", wrk(ours, "release", f"rel{rnd}", "hl", 1, API_KEY), 200)
            floor_run(rnd)
            record(rnd, "invoice", wrk(ours, "invoice", f"inv{rnd}", "hl", 1, API_KEY), 201)
            floor_run(rnd)

            # paired: each of ours and the floor loaded at the same time
            precreate(f"prel{rnd}", per_thread)
            precreate(f"pinv{rnd}", per_thread)
            time.sleep(1)
            paired(rnd, "hold", "hold", f"ph{rnd}", 201)
            paired(rnd, "release", "release", f"prel{rnd}", 200)
            paired(rnd, "invoice", "invoice", f"pinv{rnd}", 201)

    # each run of ours: its rate over the mean of the two floor runs around it; the same for CPU
    ratios: dict[str, list[float]] = {}
    cpu_ratios: dict[str, list[float]] = {}
    for rnd in range(1, rounds + 1):
        order = [r for r in runs if r["round"] == rnd]
        mine = {}
        for i, r in enumerate(order):
            if r["endpoint"] == "floor":
                continue
            mine[r["endpoint"]] = r
            around = [order[j] for j in (i - 1, i + 1) if order[j]["endpoint"] == "floor"]
            base = statistics.mean(f["rps"] for f in around)
            base_cpu = statistics.mean(f["cpu"]["server_ms"] for f in around)
            ratios.setdefault(r["endpoint"], []).append(r["rps"] / base)
            cpu_ratios.setdefault(r["endpoint"], []).append(base_cpu / r["cpu"]["server_ms"])
        for name in ("hot", "one"):
            # each against the floor around it, then over the spread holds' ratio of the round
            ratios.setdefault(f"{name}_vs_spread", []).append(ratios[name][-1] / ratios["hold"][-1])
            cpu_ratios.setdefault(f"{name}_vs_spread", []).append(
                cpu_ratios[name][-1] / cpu_ratios["hold"][-1]
            )

    paired_cpu: dict[str, list[float]] = {}
    for row in pairs:
        paired_cpu.setdefault(row["endpoint"], []).append(row["cpu_ratio"])

    endpoints: dict[str, Any] = {}
    for name in ENDPOINTS:
        mine_runs = [r for r in runs if r["endpoint"] == name]
        by_rps = sorted(mine_runs, key=lambda r: r["rps"])
        endpoints[name] = {
            "rps": statistics.median(r["rps"] for r in mine_runs),
            "rps_all": [r["rps"] for r in mine_runs],
            "p50_ms": statistics.median(r["p50_ms"] for r in mine_runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine_runs),
            "server_cpu_ms": statistics.median(r["cpu"]["server_ms"] for r in mine_runs),
            "redis_cpu_ms": statistics.median(r["cpu"]["redis_ms"] for r in mine_runs),
            "wrk_cpu_ms": statistics.median(r["cpu"]["wrk_ms"] for r in mine_runs),
            "round_trips": statistics.median(r["cpu"]["round_trips"] for r in mine_runs),
            "median_run": by_rps[len(by_rps) // 2],
            "ratio": statistics.median(ratios[name]) if name in ratios else None,
            "ratios": ratios.get(name),
            # by server CPU per request: from the paired runs where there are some
            "cpu_ratio": statistics.median(paired_cpu[name])
            if name in paired_cpu
            else statistics.median(cpu_ratios[name])
            if name in cpu_ratios
            else None,
            "cpu_ratios": paired_cpu.get(name, cpu_ratios.get(name)),
            "cpu_ratio_alternating": statistics.median(cpu_ratios[name])
            if name in cpu_ratios
            else None,
        }
    probe.close()
    client.close()
    return {
        "rounds": rounds,
        "duration_s": duration,
        "connections": connections,
        "wrk_threads": wrk_threads,
        "workers": workers,
        "threads": threads,
        "rate_limit": RATE_LIMIT,
        "listings": LISTINGS,
        "hot_stock": HOT_STOCK,
        "runs": runs,
        "pairs": pairs,
        "paired": list(PAIRED),
        "endpoints": endpoints,
        "hot_vs_spread": statistics.median(ratios["hot_vs_spread"]),
        "hot_vs_spread_all": ratios["hot_vs_spread"],
        "one_vs_spread": statistics.median(ratios["one_vs_spread"]),
        "one_vs_spread_all": ratios["one_vs_spread"],
        "hot_vs_spread_cpu": statistics.median(cpu_ratios["hot_vs_spread"]),
        "one_vs_spread_cpu": statistics.median(cpu_ratios["one_vs_spread"]),
        "hot_checks": hot_checks,
        "anomalies": anomalies,
        "others_load": statistics.mean(r["cpu"]["others"] for r in runs),
        "machine_busy": statistics.mean(r["cpu"]["machine_busy"] for r in runs),
    }
