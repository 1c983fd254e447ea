"""Latency as stored holds grow (1 thousand to 1 million), and Redis memory per stored hold.

Holds are stored quickly with exactly the library's own script calls (:mod:`.fill`). At each
level the library's single calls are timed one by one (``fuse=True`` hold, release, invoice;
``fuse=False`` hold), in turns with two controls. Memory: ``MEMORY USAGE`` of a hold's own keys
(those naming its global_id, as the library names them), the shared keys' (listings, shards)
total per stored hold, and the growth of ``used_memory`` per stored hold.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tevo_hold import build_service
from tevo_hold.connection import connect

from .bench_direct import settings_for, stock_listings
from .common import FLOOR_SCRIPT
from .fill import Recorder, store_range
from .stats import Op, SentCounter, interleave

LISTINGS = 1000
STOCK = 10**9
#: Holds live a day here (retention on top), so none lapses while the benchmark runs.
HOLD_TTL = 24 * 3600.0
BLOCK = 50
#: Holds of each path made before the timed calls (they count as stored).
WARM_UP = 200
#: Live holds whose own keys' MEMORY USAGE is averaged (all of them if fewer are stored).
MEMORY_SAMPLE = 2000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def memory_usage(probe: redis.Redis, key: str) -> int:
    """``MEMORY USAGE key SAMPLES 0``: every element counted (0 for a missing key)."""
    return int(probe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)


def pattern(key: str, global_id: str | None = None, remote_id: str | None = None) -> str:
    """A key's name with the ids in it named, and numbers (shards, listings) as N."""
    if global_id:
        key = key.replace(global_id, "<global_id>")
    if remote_id:
        key = key.replace(remote_id, "<remote_id>")
    return re.sub(r"\d+", "N", key)


def _kind(probe: redis.Redis, key: str) -> str:
    return f"{_text(probe.type(key))} ({_text(probe.object('encoding', key))})"


def own_keys(
    probe: redis.Redis, recorder: Recorder, holds: list[tuple[str, str]]
) -> dict[str, Any]:
    """Mean MEMORY USAGE of each kind of key of a hold's own (the keys naming its global_id)."""
    acc: dict[str, dict[str, Any]] = {}
    for gid, rid in holds:
        for key in recorder.hold(gid, rid).keys:
            if gid not in key:
                continue
            entry = acc.setdefault(pattern(key, gid, rid), {"sum": 0, "n": 0, "present": 0})
            entry["n"] += 1
            size = memory_usage(probe, key)
            if size:
                entry["sum"] += size
                entry["present"] += 1
                entry.setdefault("example", key)
    return {
        pat: {
            "bytes_per_hold": e["sum"] / e["n"],
            "bytes_when_present": e["sum"] / e["present"] if e["present"] else 0,
            "present": e["present"] / e["n"],
            "kind": _kind(probe, e["example"]) if "example" in e else "absent",
        }
        for pat, e in acc.items()
    }


def shared_keys_report(probe: redis.Redis, keys: set[str], holds: int) -> dict[str, Any]:
    """MEMORY USAGE of the shared keys (listings, shards), by kind, per stored hold."""
    acc: dict[str, dict[str, Any]] = {}
    for key in keys:
        size = memory_usage(probe, key)
        entry = acc.setdefault(pattern(key), {"sum": 0, "keys": 0, "largest": ("", -1)})
        entry["sum"] += size
        entry["keys"] += 1
        if size > entry["largest"][1]:
            entry["largest"] = (key, size)
    return {
        pat: {
            "bytes_per_hold": e["sum"] / holds,
            "keys": e["keys"],
            "kind": _kind(probe, e["largest"][0]) if e["largest"][1] > 0 else "absent",
        }
        for pat, e in acc.items()
    }


def _fits(probe: redis.Redis, more_holds: int, bytes_per_hold: float) -> bool:
    """Whether ``more_holds`` holds fit in half of the machine's available memory."""
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    return not available or more_holds * bytes_per_hold * 1.2 < available / 2


def run(
    url: str, control_url: str, *, levels: list[int], samples: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fill the Redis at ``url`` (flushed first) level by level and time single calls at each.

    Two controls take turns with the timed calls: a bare EVALSHA on the same Redis (it sees the
    keyspace grow too) and one on the empty Redis at ``control_url`` (it sees only the machine).
    """
    settings = settings_for(url, hold_ttl=HOLD_TTL)
    probe = redis.Redis.from_url(url)
    probe.flushall()
    client = connect(settings)
    counter = SentCounter(client)
    floor = client.register_script(FLOOR_SCRIPT)
    control_client = connect(settings_for(control_url))
    control_floor = control_client.register_script(FLOOR_SCRIPT)
    fused = build_service(settings, client=client, fuse=True)
    stepwise = build_service(settings, client=client, fuse=False)
    recorder = Recorder(settings)
    stock_listings(fused, "L", LISTINGS, STOCK)
    base_memory = int(probe.info("memory")["used_memory"])
    for i in range(WARM_UP):  # warm-up (these holds count as stored)
        fused.hold(remote_id=f"L{i % LISTINGS}", quantity=1, global_id=f"w{i}x")
        stepwise.hold(remote_id=f"L{i % LISTINGS}", quantity=1, global_id=f"v{i}x")
    stored = 2 * WARM_UP

    filled = 0
    shared: set[str] = set()
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    for level in levels:
        # `level` holds are stored when the timed calls start (they add 1.5 x samples more)
        need = max(0, level - stored)
        if rows and not _fits(probe, need, rows[-1]["bytes_per_hold"]):
            skipped = [x for x in levels if x >= level]
            log(f"  left out {skipped}: Redis would need more than half the memory available")
            break
        store_range(probe, settings, "s", "L", LISTINGS, filled, filled + need, shared_keys=shared)
        filled += need
        stored += need
        row: dict[str, Any] = {"level": level, "stored_before": stored}
        tag = f"m{level}"
        half = samples // 2

        def hold(i: int, tag: str = tag) -> None:
            fused.hold(remote_id=f"L{i % LISTINGS}", quantity=1, global_id=f"{tag}n{i}x")

        def hold_stepwise(i: int, tag: str = tag) -> None:
            stepwise.hold(remote_id=f"L{i % LISTINGS}", quantity=1, global_id=f"{tag}w{i}x")

        def release(i: int, tag: str = tag) -> None:
            fused.release(global_id=f"{tag}n{i}x")

        def invoice(i: int, tag: str = tag) -> None:
            fused.invoice(global_id=f"{tag}n{i}x", tevo_order_id=i)

        def evalsha(i: int, tag: str = tag) -> None:
            floor(keys=[f"ref:{tag}-{i}"], args=[i])

        def control(i: int, tag: str = tag) -> None:
            control_floor(keys=[f"ref:{tag}-{i}"], args=[i])

        # in turns with the controls, so that a machine slowing down shows in them too
        row.update(
            interleave(
                {
                    "control": Op(control, range(samples)),
                    "evalsha": Op(evalsha, range(samples)),
                    "hold": Op(hold, range(samples)),
                    "hold_stepwise": Op(hold_stepwise, range(half)),
                },
                BLOCK,
                counter,
                probe,
            )
        )
        row.update(
            interleave(
                {"release": Op(release, range(half)), "invoice": Op(invoice, range(half, samples))},
                BLOCK,
                counter,
                probe,
            )
        )
        stored += samples + half
        row["stored_after"] = stored
        row["dbsize"] = int(probe.dbsize())
        row["used_memory"] = int(probe.info("memory")["used_memory"])
        row["bytes_per_hold"] = (row["used_memory"] - base_memory) / stored
        rows.append(row)
        log(
            f"  {stored:>9,} stored holds: hold p50 {row['hold']['p50_ms']:.3f} ms "
            f"p99 {row['hold']['p99_ms']:.3f} ms; used_memory {row['used_memory'] / 2**20:,.0f} MiB"
        )

    # the holds whose own keys are measured: stored ones, live, up to MEMORY_SAMPLE of them (the
    # warm-up's fused holds count too, so that a run of small levels has some)
    def live(i: int) -> tuple[str, str]:
        """The i-th stored hold's global_id and remote_id: the filled ones, then the warm-up's."""
        if i < filled:
            return f"s{i}x", f"L{i % LISTINGS}"
        return f"w{i - filled}x", f"L{(i - filled) % LISTINGS}"

    population = filled + WARM_UP
    sample = [
        live(i) for i in random.Random(7).sample(range(population), min(MEMORY_SAMPLE, population))
    ]
    # the last level measured (those after it may have been left out)
    tag = f"m{rows[-1]['level']}"
    released = (f"{tag}n0x", f"L{0 % LISTINGS}")
    invoiced = (f"{tag}n{samples // 2}x", f"L{(samples // 2) % LISTINGS}")
    result: dict[str, Any] = {
        "levels": rows,
        "listings": LISTINGS,
        "base_memory": base_memory,
        "memory": {
            "stored": stored,
            "sampled": len(sample),
            "own": own_keys(probe, recorder, sample),
            "shared": shared_keys_report(probe, shared, stored),
            # a hold of the last level released, and one invoiced (an invoice may add keys)
            "released_own": own_keys(probe, recorder, [released]),
            "invoiced_own": own_keys(probe, recorder, [invoiced]),
            "redis_config": {
                k: _text(v)
                for name in (
                    "stream-node-max-bytes",
                    "hash-max-listpack-entries",
                    "zset-max-listpack-entries",
                )
                for k, v in probe.config_get(name).items()
            },
        },
        "skipped": skipped,
    }
    for c in (probe, client, control_client):
        c.close()
    return result
