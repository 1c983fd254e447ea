"""Real servers for tests: redis-server and gunicorn on free loopback ports, never 6379."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import redis
import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check, timeout: float = 15.0, what: str = "server") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # anything means "not yet"
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout}s (last error: {last!r})")


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: `make test` installs Debian's redis-server; "
            "or run `apt-get install redis-server`."
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tevo-hold-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            wait_for(client.ping, what=f"redis-server on port {port}")
            client.close()
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _log_file(output: Path | None) -> IO[bytes]:
    if output is None:
        return tempfile.TemporaryFile()
    return output.open("w+b")


@contextmanager
def gunicorn_server(
    env: Mapping[str, str],
    *,
    workers: int = 4,
    threads: int = 4,
    output: Path | None = None,
) -> Iterator[str]:
    """``gunicorn server.wsgi:app`` with the project's config on a free port; yields its URL.

    Its stdout and stderr go to ``output`` if given (to read its logs), else to a temporary file
    shown only when it fails to start.
    """
    port = free_port()
    # Each server its own metrics directory (gunicorn.conf.py makes one), unless env names one.
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TEVO_HOLD_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    full_env.update(env)
    full_env["TEVO_HOLD_BIND"] = f"127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "server" / "gunicorn.conf.py"),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--access-logfile",
        "/dev/null",
        "server.wsgi:app",
    ]
    base = f"http://127.0.0.1:{port}"
    with _log_file(output) as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: requests.get(base + "/healthz", timeout=1).ok, what="gunicorn")
            yield base
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode("utf-8", "replace")[-5000:])
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
