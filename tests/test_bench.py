"""The benchmark's own logic (tests/bench/): its statistics, the verdicts and sentences its page
draws from the numbers, where a run writes its results, and that it cleans up after itself.

No timing is asserted: the page is rendered from the committed results of a full run
(tests/bench/results.json), edited where a case needs other numbers.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench import __main__ as bench_main
from tests.bench import bench_scale, machine, report
from tests.bench.stats import percentile

from .servers import ROOT, child_pids, redis_server

COMMITTED = ROOT / "tests" / "bench" / "results.json"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMMITTED.read_text("utf-8"))
    return loaded


@pytest.fixture
def results(committed: dict[str, Any]) -> dict[str, Any]:
    """A copy of the committed results, for a test to edit."""
    return copy.deepcopy(committed)


def paragraph(page: str, start: str) -> str:
    """The paragraph (or table row) of ``page`` that starts with ``start``."""
    found = [p for p in re.split(r"\n", page) if p.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


# -- statistics --------------------------------------------------------------------------------


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


# -- verdicts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.849, "0.849"), (0.8499999, "0.8499999"), (0.97, "0.97"), (0.85, "0.85"), (0.851, "0.85")],
)
def test_a_ratio_is_shown_on_the_side_of_the_threshold_it_lies(value: float, shown: str) -> None:
    assert report.ratio_vs(value, 0.85) == shown
    assert (float(shown) >= 0.85) == (value >= 0.85)


def test_share_verdict_names_the_threshold_it_checks() -> None:
    assert report.share_verdict(0.97, 0.96, 0.85) == "at least 0.85 by both"
    assert "below 0.85 by req/s**, not by server CPU" in report.share_verdict(0.849, 0.88, 0.85)
    assert "below 0.85 by server CPU per request**, not by req/s" in report.share_verdict(
        0.9, 0.84, 0.85
    )
    assert "below 0.85 by req/s and by server CPU" in report.share_verdict(0.8, 0.8, 0.85)


def level(stored: int, hold: tuple[float, float], control: tuple[float, float]) -> dict[str, Any]:
    """A level of the scale benchmark: (p50, p99) of a hold and of both controls."""
    p50, p99 = control
    return {
        "stored_before": stored,
        "hold": {"p50_ms": hold[0], "p99_ms": hold[1]},
        "control": {"p50_ms": p50, "p99_ms": p99},
        "evalsha": {"p50_ms": p50, "p99_ms": p99},
    }


def test_flat_is_judged_on_the_worst_level_p50_and_p99_after_the_drift() -> None:
    steady = [level(1000, (0.1, 0.2), (0.05, 0.1)), level(10**6, (0.11, 0.22), (0.05, 0.1))]
    assert report.flat_verdict(steady) == "flat"
    # a spike at a middle level, the last level back where it started
    spike = [steady[0], level(10**5, (0.4, 0.2), (0.05, 0.1)), steady[1]]
    assert report.worst_growth(spike, "hold", "p50_ms", "control") == (pytest.approx(4.0), 10**5)
    assert report.flat_verdict(spike) == "not flat"
    # the p99 alone
    tail = [steady[0], level(10**6, (0.1, 1.0), (0.05, 0.1))]
    assert report.flat_verdict(tail) == "not flat"
    # the machine slowed down twofold, the control with it: flat
    drift = [steady[0], level(10**6, (0.2, 0.4), (0.1, 0.2))]
    assert report.worst_growth(drift, "hold", "p99_ms", "control")[0] == pytest.approx(1.0)
    assert report.flat_verdict(drift) == "flat"


# -- the page ----------------------------------------------------------------------------------


def test_hot_listing_verdict_per_row_agrees_with_its_numbers(results: dict[str, Any]) -> None:
    http = results["http"]
    http.update(hot_vs_spread=0.97, hot_vs_spread_cpu=0.96)
    http.update(one_vs_spread=0.849, one_vs_spread_cpu=0.88)
    text = paragraph(report.render(results), "The hot listing:")
    assert "in CPU per request too" not in text
    assert "on one hot listing 0.97 by req/s" in text
    assert "0.96 by server CPU per request, at least 0.85 by both" in text
    assert "where every hold wins 0.849 by req/s" in text
    assert "0.88 by server CPU per request, **below 0.85 by req/s**, not by server CPU" in text
    # both rows at the target: no verdict of "below"
    http.update(one_vs_spread=0.9)
    assert "below" not in paragraph(report.render(results), "The hot listing:")


def test_hot_listing_table_and_text_use_one_measure(results: dict[str, Any]) -> None:
    """The table's x spread holds per round is the text's (each against its floor runs)."""
    page = report.render(results)
    http = results["http"]
    rows = [
        line.split(" | ") for line in page.splitlines() if re.match(r"\| \d+ \| [\d,]+ \|", line)
    ]
    assert [row[-1].rstrip(" |") for row in rows] == [f"{x:.2f}" for x in http["hot_vs_spread_all"]]
    per_round = ", ".join(f"{x:.2f}" for x in http["hot_vs_spread_all"])
    assert f"(per round: {per_round})" in paragraph(page, "The hot listing:")


def test_hot_listing_holds_are_not_called_concurrent(results: dict[str, Any]) -> None:
    results["http"]["connections"] = 64
    page = report.render(results)
    assert "concurrent holds" not in page
    assert "holds sent over 64 connections (at most 64 in flight at once)" in page
    assert "16 connections" not in page


def test_rate_limiter_cost_is_what_the_runs_say(results: dict[str, Any]) -> None:
    http = results["http"]
    page = report.render(results)
    assert "quarter of a millisecond" not in page
    # the committed run: the server with the limiter used less CPU (median), not a cost
    assert (
        http["endpoints"]["hold"]["server_cpu_ms"] < http["endpoints"]["nolimit"]["server_cpu_ms"]
    )
    text = paragraph(page, "The rate limiter's share:")
    assert "costs about -" not in text
    assert "less CPU per request than the one without" in text
    assert "changes sign from round to round" in text
    # a cost in every round
    for run in http["runs"]:
        if run["endpoint"] == "nolimit":
            run["cpu"]["server_ms"] = 0.2
        if run["endpoint"] == "hold":
            run["cpu"]["server_ms"] = 0.3
    http["endpoints"]["hold"]["server_cpu_ms"] = 0.3
    http["endpoints"]["nolimit"]["server_cpu_ms"] = 0.2
    text = paragraph(report.render(results), "The rate limiter's share:")
    assert "it costs about 0.100 ms of server CPU" in text
    assert "more in every round" in text


def test_redis_cap_is_compared_with_the_http_rate(results: dict[str, Any]) -> None:
    http_rps = results["http"]["endpoints"]["hold"]["rps"]
    results["direct"]["fused"]["hold"]["redis_us"] = 2e6 / http_rps  # a cap of half the rate
    text = paragraph(report.render(results), "Redis time per call caps")
    assert "well above" not in text
    assert "**not above the" in text
    results["direct"]["fused"]["hold"]["redis_us"] = 1e6 / (10 * http_rps)
    text = paragraph(report.render(results), "Redis time per call caps")
    assert "10.0 times the" in text


def test_no_history_is_told_as_measured(results: dict[str, Any]) -> None:
    page = report.render(results)
    assert "took all 16 connections" not in page
    assert "half the rate and twice the latency" not in page


def test_stored_holds_flat_verdict_sees_a_middle_level(results: dict[str, Any]) -> None:
    levels = results["scale"]["levels"]
    assert len(levels) > 2
    levels[2]["hold"]["p50_ms"] *= 4
    page = report.render(results)
    text = paragraph(page, "Stored holds:")
    assert "a hold's latency is **not flat**" in text
    growth = (levels[2]["hold"]["p50_ms"] / levels[0]["hold"]["p50_ms"]) / (
        levels[2]["control"]["p50_ms"] / levels[0]["control"]["p50_ms"]
    )
    assert f"p50 was x{growth:.2f} (at {levels[2]['stored_before']:,} stored holds)" in text
    assert "**not flat**" in paragraph(page, "| Hold latency")


def test_release_and_invoice_are_against_their_own_evalsha(results: dict[str, Any]) -> None:
    d = results["direct"]
    d["evalsha_2"]["rate"] = 2 * d["evalsha"]["rate"]
    d["evalsha_2"]["p50_ms"] = d["evalsha"]["p50_ms"] / 2
    page = report.render(results)
    row = paragraph(page, "| `service.release` | fused |").split(" | ")
    r = d["fused"]["release"]
    assert row[3] == f"{r['rate'] / d['evalsha_2']['rate']:.2f}"
    assert row[4] == f"{d['evalsha_2']['p50_ms'] / r['p50_ms']:.2f}"
    row = paragraph(page, "| `service.hold` | fused |").split(" | ")
    assert row[3] == f"{d['fused']['hold']['rate'] / d['evalsha']['rate']:.2f}"
    assert (
        f"an invoice at {d['fused']['invoice']['rate'] / d['evalsha_2']['rate']:.2f}, each "
        "against the EVALSHA it took turns with" in page
    )


def test_memory_sample_size_is_the_one_measured(results: dict[str, Any]) -> None:
    results["scale"]["memory"].pop("sampled", None)  # results of before it was recorded
    assert "2,000 stored holds" not in report.render(results)  # render without it
    results["scale"]["memory"]["sampled"] = 700
    assert "own: mean over 700 stored holds" in report.render(results)


def test_revision_is_shown_when_recorded(results: dict[str, Any]) -> None:
    results["machine"].pop("git", None)  # results of before it was recorded
    assert "tevo-hold revision" not in report.render(results)  # render without it
    results["machine"]["git"] = {"revision": "0123abc", "dirty": True}
    assert "| tevo-hold revision | `0123abc` with uncommitted changes |" in report.render(results)
    results["machine"]["git"]["dirty"] = False
    assert "| tevo-hold revision | `0123abc` |" in report.render(results)


def test_git_revision_of_the_checkout(tmp_path: Path) -> None:
    found = machine.git_revision(ROOT)
    assert found is not None
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found["revision"] == head.stdout.strip()
    assert isinstance(found["dirty"], bool)
    assert machine.git_revision(tmp_path) is None  # not a checkout


# -- where results go --------------------------------------------------------------------------


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


# -- the scale benchmark -----------------------------------------------------------------------


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


# -- stopping ----------------------------------------------------------------------------------


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
