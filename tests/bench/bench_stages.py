"""Where a request's CPU goes: each stage of tevo-hold's hold, release and invoice, and the floor's.

The apps run in a process of their own (``python -m tests.bench.bench_stages URL``, which prints
one JSON line), as gunicorn's workers run them: prometheus_client in multiprocess mode, the JSON
access log written to a file. Requests are WSGI calls made in process, no HTTP server: what is
measured is the app's own work, the part of a request that differs between tevo-hold and the
floor (gunicorn's share is the same for both). Each stage is timed in CPU time of the calling
thread (``time.thread_time_ns``), so waiting for Redis counts only for the system calls it costs.
Each timer costs CPU of its own (two system calls), in the stage it times and in any stage around
it, so each request also runs untimed, for what a request costs without them, and untimed with
Redis's answers canned, for the app's own work with no wait in it. The kinds of request and the
three ways take turns in blocks, so a slow spell of the machine hits all of them alike.
"""

from __future__ import annotations

import io
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tests.servers import ROOT

from .bench_http import RATE_LIMIT
from .common import API_KEY

BLOCK = 200
LISTINGS = 100
KINDS = ("hold", "release", "invoice", "floor")
#: Stages in the order of a request: (key, what it is). "rest" is the whole request less the
#: others: Flask and werkzeug's own work (request context, routing, hook calls, the response's
#: headers) and, for the floor, its whole view but the script call.
STAGES = (
    ("before", "before-request hooks: request id, API key, rate-limit charge"),
    ("load", "reading the body and checking its fields"),
    ("keys_args", "the service call but Redis and the reply: ids, keys, arguments, wrappers"),
    ("redis", "the script call: sending it, Redis's answer, parsing it (redis-py, hiredis)"),
    ("reply", "the reply decoded into a Hold"),
    ("answer", "the Hold as JSON, the Response"),
    ("after", "after-request hook: metrics, the request id header, queueing the log line"),
    ("log", "the access log line, logged in a batch: its record, its JSON, its share of a write"),
    ("teardown", "teardown hooks"),
    ("rest", "Flask and werkzeug: request context, routing, calling the hooks"),
)


def run(url: str, *, requests: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure in a process of its own; ``requests`` of each kind (after a warm-up)."""
    with tempfile.TemporaryDirectory() as metrics_dir:
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "TEVO_HOLD_REDIS_URL": url,
            "TEVO_HOLD_API_KEYS": API_KEY,
            "TEVO_HOLD_RATE_LIMIT": RATE_LIMIT,
        }
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.bench_stages", str(requests)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for kind in KINDS:
        us = result["us"][kind]
        log(
            f"  {kind:8} {us['whole']:6.0f} us CPU per request: "
            + ", ".join(f"{k} {us[k]:.0f}" for k, _ in STAGES if k in us)
        )
    return result


def _environ(path: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_API_KEY": API_KEY,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


class _Clock:
    """CPU time per stage, summed while ``on``, and how many times each stage was timed."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.on = False

    def add(self, name: str, ns: int) -> None:
        if self.on:
            self.ns[name] = self.ns.get(name, 0) + ns
            self.calls[name] = self.calls.get(name, 0) + 1


def _measure(requests: int) -> dict[str, Any]:
    """In the child process: every stage of every kind, in µs of CPU per request."""
    import logging

    import redis

    import tests.bench.floor_app as floor_app
    import tevo_hold.observability as observability
    import tevo_hold.web as web
    from tevo_hold._redis import Script
    from tevo_hold.app import create_app
    from tevo_hold.ledger import Ledger
    from tevo_hold.observability import JsonFormatter, LineHandler

    # the access log as under gunicorn (its handler's settings): JSON lines appended to a file
    log_file = tempfile.NamedTemporaryFile(prefix="bench-stages-", suffix=".log")  # noqa: SIM115
    conf = runpy.run_path(str(ROOT / "server" / "gunicorn.conf.py"))
    flush_interval = conf["logconfig_dict"]["handlers"]["stderr"].get("flush_interval", 0)
    fd = os.open(log_file.name, os.O_WRONLY | os.O_APPEND)
    handler = LineHandler(fd, flush_interval=flush_interval)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    redis.Redis.from_url(os.environ["TEVO_HOLD_REDIS_URL"]).flushall()
    app = create_app({"TEVO_HOLD_INVENTORY_FILE": os.devnull})
    service = app.extensions["tevo_hold"].service
    for i in range(LISTINGS):
        service.adapter.set_quantity(f"sl-{i}", 10**9)

    #: The clock and the kind of request that the timers count for now.
    current: dict[str, Any] = {"clock": _Clock(), "kind": "hold"}
    thread_ns = time.thread_time_ns

    def timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = thread_ns()
            try:
                return func(*args, **kwargs)
            finally:
                current["clock"].add(name, thread_ns() - started)

        return call

    # The app's hooks by stage, and each stage's functions as registered.
    tables = {
        "before": app.before_request_funcs,
        "after": app.after_request_funcs,
        "teardown": app.teardown_request_funcs,
    }
    hooks = {
        stage: {key: list(funcs) for key, funcs in table.items()} for stage, table in tables.items()
    }
    # Each kind's last reply from Redis is kept, for the pass with Redis's answers canned.
    replies: dict[str, Any] = {}
    evalsha, floor_script = Script._evalsha, floor_app.script

    def recorded(script: Script, keys: Any, args: Any) -> Any:
        replies[current["kind"]] = evalsha(script, keys, args)
        return replies[current["kind"]]

    def floor_recorded(keys: Any, args: Any) -> Any:
        replies["floor"] = floor_script(keys=keys, args=args)
        return replies["floor"]

    # The timers, put in place in the timed requests only: (owner, name, the function untimed,
    # the timed one).
    patches: list[tuple[Any, str, Any, Any]] = [
        (web, "_load", web._load, timed("load", web._load)),
        (web, "_hold_response", web._hold_response, timed("answer", web._hold_response)),
        (Script, "_evalsha", recorded, timed("redis", recorded)),
        (
            Ledger,
            "claim_from_reply",
            Ledger.claim_from_reply,
            timed("reply", Ledger.claim_from_reply),
        ),
        (floor_app, "script", floor_recorded, timed("redis", floor_recorded)),
    ]
    patches += [
        (service, op, getattr(service, op), timed("service", getattr(service, op)))
        for op in ("hold", "release", "invoice")
    ]

    def instrument(on: bool) -> None:
        for owner, name, plain, with_timer in patches:
            setattr(owner, name, with_timer if on else plain)
        for stage, saved in hooks.items():
            for key, funcs in saved.items():
                tables[stage][key] = [timed(stage, f) for f in funcs] if on else list(funcs)

    # The access lines are logged in batches by a thread of the process's own; here the batch
    # of each block of requests is logged at the block's end instead, in this thread, so that its
    # CPU is counted, for the kind of request it belongs to (the thread never starts).
    observability._ACCESS_FLUSHER.running = True
    flush_access_log = timed("log", observability.flush_access_log)
    apps = {"tevo": app.wsgi_app, "floor": floor_app.app.wsgi_app}

    def call(kind: str, n: int, tag: str) -> None:
        gid = f"{tag}{kind}-{n}"
        if kind == "release":
            gid = f"{tag}hold-{n}"  # the hold of the same block
            path, body = "/v1/releases", {"global_id": gid}
        elif kind == "invoice":
            gid = f"{tag}inv-{n}"
            path, body = "/v1/invoices", {"global_id": gid, "tevo_order_id": n + 1}
        else:
            path = "/v1/holds"
            body = {"remote_id": f"sl-{n % LISTINGS}", "quantity": 1, "global_id": gid}
        statuses: list[str] = []
        environ = _environ(path, json.dumps(body).encode())
        started = thread_ns()
        answer = apps["floor" if kind == "floor" else "tevo"](
            environ, lambda status, headers, exc=None: statuses.append(status)
        )
        for _ in answer:
            pass
        answer.close()
        current["clock"].add("whole", thread_ns() - started)
        if not statuses[0].startswith("20"):
            raise RuntimeError(f"bench_stages: {kind} {gid} answered {statuses[0]}")

    warm = -(-500 // BLOCK) * BLOCK  # whole blocks: the clocks are turned on block by block
    total = warm + requests

    # Three ways, taking turns block by block (so that a slow spell of the machine hits all alike):
    # "timed", every stage timed (each timer costs CPU of its own, two system calls, in the stage
    # it times and in any stage around it); "untimed", no timer but the one around the request,
    # so what a request costs with the timers' share left out; "canned", untimed too, with each
    # script call answered at once with the reply Redis gave the last request of its kind: the
    # app's own work with no wait for Redis in it, so on warm caches. Beside "untimed" it shows
    # what the wait costs the code that runs after it.
    modes = ("timed", "untimed", "canned")
    clocks = {mode: {kind: _Clock() for kind in KINDS} for mode in modes}
    for mode in ("timed", "untimed"):  # the holds that invoices sell (releases sell their own)
        for n in range(total):
            service.hold(remote_id=f"sl-{n % LISTINGS}", quantity=1, global_id=f"{mode}-inv-{n}")

    def answer_at_once(script: Script, keys: Any, args: Any) -> Any:
        return replies[current["kind"]]

    def floor_at_once(keys: Any, args: Any) -> Any:
        return replies["floor"]

    for lo in range(0, total, BLOCK):
        for mode in modes:
            instrument(mode == "timed")
            if mode == "canned":
                Script._evalsha = answer_at_once  # type: ignore[method-assign]
                floor_app.script = floor_at_once  # type: ignore[assignment]
            for kind in KINDS:
                current["clock"], current["kind"] = clocks[mode][kind], kind
                clocks[mode][kind].on = lo >= warm
                for n in range(lo, min(lo + BLOCK, total)):
                    call(kind, n, f"{mode}-")
                flush_access_log()  # this block's lines (as the thread would, every 0.1 s)
    instrument(False)
    handler.flush()
    log_file.close()
    staged, untimed, canned = (clocks[mode] for mode in modes)

    def per_request(clock: _Clock, name: str) -> float:
        # over the requests timed ("whole" times each one, in every way)
        return clock.ns.get(name, 0) / clock.calls["whole"] / 1000

    def whole(clock: _Clock) -> float:
        # the access lines are logged after the requests: their share is added
        return per_request(clock, "whole") + per_request(clock, "log")

    us: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        clock = staged[kind]
        stages = {k: per_request(clock, k) for k in ("before", "load", "redis", "reply", "answer")}
        stages.update({k: per_request(clock, k) for k in ("after", "log", "teardown")})
        if kind != "floor":
            stages["keys_args"] = per_request(clock, "service") - stages["redis"] - stages["reply"]
        stages["rest"] = whole(clock) - sum(stages.values())
        stages["whole"] = whole(clock)
        us[kind] = stages
    return {
        "requests": requests,
        "block": BLOCK,
        "us": us,
        # the timers a timed request ran beyond the untimed one's (whose only timer is "whole",
        # and "log" around its share of the access log's batch), for what one timer costs
        "timers": {
            kind: sum(n for name, n in staged[kind].calls.items() if name not in ("whole", "log"))
            / staged[kind].calls["whole"]
            for kind in KINDS
        },
        "untimed_us": {kind: whole(clock) for kind, clock in untimed.items()},
        "canned_us": {kind: whole(clock) for kind, clock in canned.items()},
    }


if __name__ == "__main__":
    print(json.dumps(_measure(int(sys.argv[1]))))
