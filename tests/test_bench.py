"""The benchmark's own logic (tests/bench/): its statistics and what it records.

No timing is asserted.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench import bench_scale, machine
from tests.bench.stats import percentile

from .servers import ROOT, redis_server


def test_percentile_is_the_nearest_rank() -> None:
    """The smallest value that p % of the values are no larger than: rank ceil(p/100 * n)."""
    ten = [float(x) for x in range(1, 11)]
    assert percentile(ten, 50) == 5  # rank 5, not 6 (5.5 rounded half to even)
    assert percentile(ten, 30) == 3
    assert percentile(ten, 90) == 9
    assert percentile(ten, 91) == 10
    assert percentile(ten, 100) == 10
    assert percentile(ten, 0) == 1
    thousand = [float(x) for x in range(1, 1001)]
    assert percentile(thousand, 99.9) == 999  # 99.9 % of 1,000 is 999, floats notwithstanding
    assert percentile(thousand, 99) == 990
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))


def test_git_revision_of_the_checkout(tmp_path: Path) -> None:
    found = machine.git_revision(ROOT)
    assert found is not None
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found["revision"] == head.stdout.strip()
    assert isinstance(found["dirty"], bool)
    assert machine.git_revision(tmp_path) is None  # not a checkout


@pytest.fixture(scope="module")
def two_redis() -> Iterator[tuple[str, str]]:
    with redis_server() as url, redis_server() as control:
        yield url, control


def test_scale_with_small_levels_and_a_skipped_one(two_redis: tuple[str, str]) -> None:
    """Fewer stored holds than the memory sample: all of them are sampled; a level left out for
    memory: the finished holds measured are the last measured level's."""
    url, control = two_redis
    got = bench_scale.run(url, control, levels=[100, 10**13], samples=20, log=lambda _: None)
    assert [row["level"] for row in got["levels"]] == [100]
    assert got["skipped"] == [10**13]
    memory = got["memory"]
    assert memory["sampled"] == bench_scale.WARM_UP  # nothing filled: the warm-up's holds
    assert sum(v["bytes_per_hold"] for v in memory["own"].values()) > 0
    assert sum(v["bytes_per_hold"] for v in memory["released_own"].values()) > 0
    assert sum(v["bytes_per_hold"] for v in memory["invoiced_own"].values()) > 0
