"""Small helpers: timing calls, percentiles, Redis command counts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from typing import Any

import redis

#: Commands a client sends to run a script; every other command in INFO commandstats ran inside
#: a script (Redis 7 counts those too).
SCRIPT_COMMANDS = frozenset(
    {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "script|load"}
)
#: Commands of the benchmark's own probes (and redis-py's connection set-up), not measured.
PROBE_COMMANDS = frozenset({"info", "hello", "client|setinfo", "script|exists"})


def percentile(sorted_values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of an ascending list: the smallest value that at
    least ``p`` % of the values are no larger than (rank ``ceil(p / 100 * n)``, at least 1)."""
    if not sorted_values:
        return float("nan")
    n = len(sorted_values)
    # Fraction: p = 99.9 in binary floating point would put 99.9 % of 1,000 just above 999
    rank = max(1, min(n, math.ceil(Fraction(str(p)) * n / 100)))
    return sorted_values[rank - 1]


def summary(lat_ns: list[int], busy_ns: int) -> dict[str, Any]:
    """Rate (calls per second of time spent in the calls) and latency percentiles (ms)."""
    lat = sorted(lat_ns)
    return {
        "count": len(lat),
        "seconds": busy_ns / 1e9,
        "rate": len(lat) / (busy_ns / 1e9),
        "p50_ms": percentile(lat, 50) / 1e6,
        "p90_ms": percentile(lat, 90) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "p999_ms": percentile(lat, 99.9) / 1e6,
        "max_ms": lat[-1] / 1e6,
    }


def timed(fn: Callable[[Any], Any], items: Iterable[Any]) -> dict[str, Any]:
    """Call ``fn`` on each item in turn: :func:`summary` of the calls."""
    lat: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for item in items:
        t0 = clock()
        fn(item)
        lat.append(clock() - t0)
    return summary(lat, clock() - start)


def commandstats(probe: redis.Redis) -> dict[str, tuple[int, int]]:
    """Calls and microseconds per command since the server started (``INFO commandstats``)."""
    info = probe.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


class SentCounter:
    """Counts the commands a redis-py client sends (each is one round trip, unpipelined)."""

    def __init__(self, client: redis.Redis) -> None:
        self.sent = 0
        original = client.execute_command

        def counting(*args: Any, **options: Any) -> Any:
            self.sent += 1
            return original(*args, **options)

        client.execute_command = counting  # type: ignore[method-assign]


class Op:
    """One kind of call, timed in blocks; counts its round trips and the commands scripts ran."""

    def __init__(self, fn: Callable[[int], Any], items: Iterable[int]) -> None:
        self.fn = fn
        self.items: Iterator[int] = iter(items)
        self.lat: list[int] = []
        self.busy = 0
        self.sent = 0
        self.commands: dict[str, int] = {}
        self.redis_usec = 0

    def block(self, size: int, counter: SentCounter, probe: redis.Redis) -> bool:
        """Run up to ``size`` calls; False once the items are used up."""
        before, sent0 = commandstats(probe), counter.sent
        clock, fn, lat = time.perf_counter_ns, self.fn, self.lat
        done = 0
        start = clock()
        for item in self.items:
            t0 = clock()
            fn(item)
            lat.append(clock() - t0)
            done += 1
            if done == size:
                break
        self.busy += clock() - start
        self.sent += counter.sent - sent0
        for name, (calls, usec) in commandstats(probe).items():
            calls0, usec0 = before.get(name, (0, 0))
            if name not in PROBE_COMMANDS and calls != calls0:
                self.commands[name] = self.commands.get(name, 0) + calls - calls0
                if name in SCRIPT_COMMANDS or name == "ping":
                    self.redis_usec += usec - usec0
        return done == size

    def result(self) -> dict[str, Any]:
        out = summary(self.lat, self.busy)
        n = out["count"]
        inner = {k: v / n for k, v in sorted(self.commands.items()) if k not in SCRIPT_COMMANDS}
        out["round_trips_client"] = self.sent / n
        out["round_trips_server"] = (
            sum(v for k, v in self.commands.items() if k in SCRIPT_COMMANDS or k == "ping") / n
        )
        # Redis's own time per call: scripts' time includes the commands they ran
        out["redis_us"] = self.redis_usec / n
        out["inner_commands"] = sum(inner.values())
        out["inner_by_command"] = inner
        return out


def interleave(
    ops: dict[str, Op], block: int, counter: SentCounter, probe: redis.Redis
) -> dict[str, dict[str, Any]]:
    """Run the ops' calls in turn, ``block`` calls of each, until each has used its items.

    Interleaving makes a slow spell of a shared machine hit every kind of call alike.
    """
    running = dict(ops)
    while running:
        for name, op in list(running.items()):
            if not op.block(block, counter, probe):
                del running[name]
    return {name: op.result() for name, op in ops.items()}
