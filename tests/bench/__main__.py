"""``python -m tests.bench``: run every benchmark, write docs/benchmarks.md and its plots.

Starts its own redis-server and gunicorn servers on free loopback ports (never 6379) and sends
load to 127.0.0.1 only, for a bounded time. Needs wrk and redis-server on PATH and the ``bench``
extra (matplotlib); ``make bench`` installs all three where missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tests.servers import ROOT, redis_server

from . import bench_direct, bench_http, bench_scale, bench_stages, machine, report

#: The results of the last full run (committed; docs/benchmarks.md is rendered from them).
RESULTS = ROOT / "tests" / "bench" / "results.json"
#: Where a run with ``--only`` writes by default (git-ignored).
PARTIAL_RESULTS = ROOT / "tests" / "bench" / "results-partial.json"
#: The results the page is rendered from (``stages`` is optional).
PAGE_SECTIONS = ("http", "direct", "scale")
#: Signals that end a run as Ctrl-C does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal, raised the way Ctrl-C raises KeyboardInterrupt. Not a SystemExit: one
    raised inside a library call is the adapter's failure to tevo-hold (an InternalError),
    while a KeyboardInterrupt in the main thread passes through the library as it is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    for sig in STOP_SIGNALS:  # a second signal must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP (a timeout, a cancelled CI job, a closed terminal) end a run the
    way Ctrl-C does, through every ``finally`` and ``with``: else the redis-server and gunicorn
    processes the run started would outlive it (the default action ends Python at once).

    Python's own SIGINT handler is installed too, if the run was started with SIGINT ignored
    (in the background of a script, as CI may run it): tevo-hold lets a KeyboardInterrupt raised
    in a POS call through only where that handler is installed (else it is the adapter's, an
    InternalError), so a stop that landed in a hold ended the run with 1, not 128 + signal."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)


def _log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--rounds", type=int, default=6, help="HTTP rounds (default 6)")
    p.add_argument("--duration", type=float, default=3, help="seconds per wrk run (default 3)")
    p.add_argument(
        "--connections", type=int, default=16, help="wrk keep-alive connections (default 16)"
    )
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--workers",
        type=int,
        default=cores,
        help="gunicorn workers of both servers (default: one per core, %(default)s)",
    )
    p.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker (default 8)")
    p.add_argument(
        "--stage-requests",
        type=int,
        default=3000,
        help="requests of each kind timed stage by stage, in process (default 3000)",
    )
    p.add_argument(
        "--direct-holds",
        type=int,
        default=6000,
        help="holds per path in the direct benchmark (default 6000)",
    )
    p.add_argument(
        "--levels",
        default="1000,10000,100000,1000000",
        help="stored-hold levels, comma-separated (default 1000,10000,100000,1000000)",
    )
    p.add_argument(
        "--samples", type=int, default=2000, help="fused holds timed per level (default 2000)"
    )
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md goes")
    p.add_argument(
        "--results",
        type=Path,
        help="raw results (JSON; default tests/bench/results.json, or "
        "tests/bench/results-partial.json with --only)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="redraw the page and plots from --results without measuring",
    )
    p.add_argument(
        "--only",
        choices=["http", "stages", "direct", "scale"],
        action="append",
        help="run only these sections and print them (no page is written)",
    )
    args = p.parse_args(argv)
    if args.results is None:
        # a partial run must not overwrite the full results the page is rendered from
        args.results = PARTIAL_RESULTS if args.only and not args.render_only else RESULTS
    return args


def write(results: dict[str, Any], docs: Path) -> None:
    results = json.loads(json.dumps(results, default=str))  # as --render-only reads them
    report.plots(results, docs / "img")
    (docs / "benchmarks.md").write_text(report.render(results), "utf-8")
    _log(f"wrote {docs / 'benchmarks.md'} and {docs / 'img'}/bench-*.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        results = json.loads(args.results.read_text("utf-8"))
        missing = [k for k in PAGE_SECTIONS if k not in results]
        if missing:
            _log(f"{args.results} has no {', '.join(missing)} results (a run with --only?)")
            return 2
        write(results, args.docs)
        return 0
    sections = args.only or ["http", "stages", "direct", "scale"]
    for tool in ("wrk", "redis-server") if "http" in sections else ("redis-server",):
        if shutil.which(tool) is None:
            _log(f"{tool} is not installed: `make bench` installs it (Debian package {tool}).")
            return 2
    levels = [int(x) for x in args.levels.split(",")]
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.describe(),
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("docs", "results", "only")},
            "results": str(
                args.results.relative_to(ROOT)
                if args.results.is_relative_to(ROOT)
                else args.results
            ),
        },
    }
    if "http" in sections:
        _log(
            f"HTTP: gunicorn {args.workers} workers x {args.threads} threads, wrk "
            f"{args.wrk_threads} thread(s) x {args.connections} connections, "
            f"{args.rounds} rounds of {args.duration:g} s runs"
        )
        with redis_server() as url:
            results["http"] = bench_http.run(
                url,
                rounds=args.rounds,
                duration=args.duration,
                connections=args.connections,
                wrk_threads=args.wrk_threads,
                workers=args.workers,
                threads=args.threads,
                log=_log,
            )
    if "stages" in sections:
        _log("Where a request's CPU goes, stage by stage (in process):")
        with redis_server() as url:
            results["stages"] = bench_stages.run(url, requests=args.stage_requests, log=_log)
    if "direct" in sections:
        _log("The library without HTTP:")
        with redis_server() as url:
            results["direct"] = bench_direct.run(url, holds=args.direct_holds, log=_log)
    if "scale" in sections:
        _log("Latency and memory as stored holds grow:")
        with redis_server() as url, redis_server() as control_url:
            results["scale"] = bench_scale.run(
                url, control_url, levels=levels, samples=args.samples, log=_log
            )
    results["elapsed_s"] = time.monotonic() - started
    _log(f"measured in {results['elapsed_s']:.0f} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=str), "utf-8")
    if args.only:
        _log(f"results in {args.results} (a partial run writes no page)")
        return 0
    write(results, args.docs)
    return 0


if __name__ == "__main__":
    stop_on_signals()  # here, not in main(): a test calling main() keeps its own handlers
    try:
        sys.exit(main())
    except Stopped as stop:
        _log(f"stopped by {signal.Signals(stop.signum).name}; the servers it started are stopped")
        sys.exit(128 + stop.signum)
