"""The machine and software a benchmark ran on, for the report."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.servers import ROOT


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _command_version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else (out.stdout + out.stderr).strip().splitlines()[0]


def describe() -> dict[str, Any]:
    cpu = _cpuinfo()
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_mhz": cpu.get("cpu MHz"),
        "virtual": "hypervisor" in cpu.get("flags", "").split(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": mem_kb / 2**20,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": _command_version(["redis-server", "--version"], r"v=(\S+)"),
        "wrk": _command_version(["wrk", "--version"], r"wrk (\S+)"),
        "packages": {
            name: version(name) for name in ("gunicorn", "flask", "werkzeug", "redis", "tevo_hold")
        },
        "hiredis": _has("hiredis"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "git": git_revision(),
    }


def git_revision(root: Path = ROOT) -> dict[str, Any] | None:
    """The commit the benchmarked code was checked out at, and whether the working tree had
    changes of its own (then the figures belong to that commit plus those changes); None outside
    a git checkout or without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode or status.returncode:
        return None
    return {"revision": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
