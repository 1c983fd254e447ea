"""Servers for the benchmark: any WSGI app under gunicorn with the project's config, and wrk."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import child_pids, gunicorn_process

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_api.lua"


@contextmanager
def gunicorn_app(
    app: str, env: Mapping[str, str], *, workers: int, threads: int
) -> Iterator[tuple[str, int]]:
    """``gunicorn -c server/gunicorn.conf.py APP`` on a free loopback port (tests.servers').

    Yields the base URL and the master's pid. Workers and threads are given on the command line
    (they override the config file's); everything else is the config file's.
    """
    with gunicorn_process(env, workers=workers, threads=threads, app=app) as server:
        yield server.base, server.proc.pid


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: what its script's done() printed, and the raw output."""

    requests: int
    duration_s: float
    statuses: dict[int, int]
    sent_per_thread: list[int]
    errors: dict[str, int]
    latency_us: dict[str, Any]
    raw: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    def pct_ms(self, p: float) -> float:
        return float(self.latency_us["percentiles"][f"{p:g}"]) / 1000.0

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def run_wrk(
    url: str,
    args: list[str],
    *,
    duration: float,
    connections: int,
    threads: int,
    cpus: str | None = None,
) -> WrkResult:
    """Run wrk with ``wrk_api.lua`` (``args`` after ``--``) and parse its BENCH_RESULT line."""
    cmd = [
        "wrk",
        "--latency",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        *args,
    ]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60)
    line = next(
        (ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")),
        None,
    )
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        statuses={int(k): v for k, v in data["statuses"].items()},
        sent_per_thread=data["sent_per_thread"],
        errors=data["errors"],
        latency_us=data["latency_us"],
        raw=out.stdout,
    )


# -- CPU accounting ----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` and its children, e.g. gunicorn's workers."""
    total = 0.0
    for each in (pid, *child_pids(pid)):
        try:
            fields = _stat_fields(each)
        except (OSError, ValueError):
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return (total - idle) / _TICK, total / _TICK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (wrk runs), from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used between :meth:`start` and :meth:`stop` by named process trees, wrk, the machine."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        now["wrk"] = children_cpu_seconds()
        now["machine_busy"], now["machine_total"] = machine_cpu_seconds()
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        return {name: end[name] - self._start[name] for name in end}
