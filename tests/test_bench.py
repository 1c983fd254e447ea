"""The benchmark's own logic (tests/bench/): its statistics and what it records, where a run
writes its results, and that it cleans up after itself.

No timing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench import __main__ as bench_main
from tests.bench import bench_scale, machine
from tests.bench.stats import percentile

from .servers import ROOT, child_pids, redis_server

COMMITTED = ROOT / "tests" / "bench" / "results.json"


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


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMMITTED.read_text("utf-8"))
    return loaded


def test_a_partial_run_does_not_overwrite_the_full_results() -> None:
    assert bench_main.parse_args([]).results == COMMITTED
    assert bench_main.parse_args(["--render-only"]).results == COMMITTED
    partial = bench_main.parse_args(["--only", "direct"]).results
    assert partial != COMMITTED
    assert partial.parent == COMMITTED.parent
    ignored = subprocess.run(["git", "check-ignore", "-q", str(partial)], cwd=ROOT)
    assert ignored.returncode == 0, f"{partial} is not git-ignored"
    chosen = bench_main.parse_args(["--only", "direct", "--results", "/tmp/x.json"])
    assert chosen.results == Path("/tmp/x.json")


def test_render_only_refuses_partial_results(
    tmp_path: Path, committed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({k: committed[k] for k in ("machine", "config", "direct")}))
    code = bench_main.main(
        ["--render-only", "--results", str(partial), "--docs", str(tmp_path / "docs")]
    )
    assert code == 2
    assert "has no http, scale results" in capsys.readouterr().out
    assert not (tmp_path / "docs").exists()


def _is_redis(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_run_stops_its_servers(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM (a timeout, a cancelled CI job) or SIGHUP ends a run through its clean-up: no
    redis-server it started outlives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEVO_HOLD_")}
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.bench", "--only", "scale"),
            *("--levels", "1000,2000000", "--samples", "200000"),
            *("--results", str(tmp_path / "r.json")),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(servers) < 2 and time.monotonic() < deadline and run.poll() is None:
            servers = [pid for pid in child_pids(run.pid) if _is_redis(pid)]
            time.sleep(0.05)
        assert len(servers) == 2, "the run did not start its two redis-servers"
        time.sleep(0.5)  # into the fill
        run.send_signal(sig)
        assert run.wait(timeout=60) == 128 + sig, run.communicate()[0].decode()
        assert not [pid for pid in servers if _alive(pid)]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert run.stdout is not None
        run.stdout.close()
