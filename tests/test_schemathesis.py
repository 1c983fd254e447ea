"""Property-based conformance: Schemathesis against a live server, judged by the OpenAPI document.

The test starts a real redis-server and a real gunicorn (2 workers x 8 threads) on free loopback
ports, stocks the listing that the document's examples name, and runs the Schemathesis CLI on the
document the server itself serves, twice at once:

- authenticated (the API key in ``X-API-Key``): every phase (examples, coverage, fuzzing, and the
  stateful phase, which follows the document's links hold -> release / invoice / read);
- unauthenticated: examples, coverage and fuzzing (with no key nothing succeeds, so there are no
  links to follow).

Both run every check Schemathesis has (``--checks all``: no 5xx; status, content type, headers and
body as documented; invalid data refused, valid data accepted; API-key enforcement; 405 for
undeclared methods; ...) with up to MAX_EXAMPLES generated cases per operation and phase, and must
find nothing. The reports then show that the cases reached the success paths.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tevo_hold import RedisInventoryAdapter
from tevo_hold.openapi import OPERATIONS
from tevo_hold.schemas import EXAMPLE_REMOTE_ID

from .servers import gunicorn_server, redis_server

pytestmark = pytest.mark.slow

KEY = "schemathesis-key"
MAX_EXAMPLES = 300
#: Requests each API operation must have been sent, per run (fuzzing stops at MAX_EXAMPLES).
#: Typically 310-420, but how many Hypothesis generates varies widely by run (CI runs have had
#: GET at 84 and below 250), so the floor only proves the run was not degenerate (a handful).
MIN_CASES = 50
API = {
    ("POST", "/v1/holds"),
    ("POST", "/v1/releases"),
    ("POST", "/v1/invoices"),
    ("GET", "/v1/holds/{global_id}"),
}
RUNS = {
    "authenticated": [],  # the key from the environment, by CONFIG (never in argv)
    "unauthenticated": ["--phases", "examples,coverage,fuzzing"],
}
#: The authenticated run's schemathesis.toml, as docs/pos-vendors.md gives it: the key comes
#: from the environment, so that no command line shows it.
CONFIG = 'headers = { X-API-Key = "${TEVO_HOLD_CHECK_API_KEY}" }\n'


def _start(base: str, workdir: Path, extra: list[str]) -> subprocess.Popen[str]:
    workdir.mkdir()
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", base + "/v1/openapi.json",
        "--url", base,
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-database", "none",
        # Generous: on a loaded 2-core machine a slow answer is not what this test is about
        # (nor is Hypothesis's own generation speed); a wrong one is.
        "--request-timeout", "30",
        "--suppress-health-check", "too_slow",
        "--report", "json,har",
        "--report-dir", str(workdir / "report"),
        "--no-color",
        *extra,
    ]  # fmt: skip
    env = dict(os.environ)
    if not extra:  # authenticated: schemathesis.toml in its working directory names the key
        (workdir / "schemathesis.toml").write_text(CONFIG, "utf-8")
        env["TEVO_HOLD_CHECK_API_KEY"] = KEY
    # Its own working directory: Schemathesis keeps caches (.hypothesis/, .schemathesis/) there.
    return subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _report(workdir: Path, kind: str) -> Any:
    (path,) = (workdir / "report").glob(f"{kind}-*.json")
    return json.loads(path.read_text("utf-8"))


def _operation(method: str, url: str) -> tuple[str, str]:
    path = "/" + url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
    return method, "/v1/holds/{global_id}" if path.startswith("/v1/holds/") else path


@pytest.mark.timeout(420)
def test_schemathesis_finds_no_failure_authenticated_or_not(tmp_path: Path) -> None:
    outputs: dict[str, str] = {}
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        RedisInventoryAdapter(client).set_quantity(EXAMPLE_REMOTE_ID, 10**9)
        client.close()
        # Thousands of cases a minute with one key: no rate limit (429 is in the contract, but
        # answering it to most cases would leave the success paths unexplored).
        env = {"TEVO_HOLD_REDIS_URL": url, "TEVO_HOLD_API_KEYS": KEY, "TEVO_HOLD_RATE_LIMIT": "off"}
        with gunicorn_server(env, workers=2, threads=8) as base:
            runs = {name: _start(base, tmp_path / name, extra) for name, extra in RUNS.items()}
            for name, run in runs.items():
                outputs[name], _ = run.communicate(timeout=360)
                assert run.returncode == 0, f"schemathesis ({name}) failed:\n{outputs[name]}"

    summary = {}
    for name in RUNS:
        workdir = tmp_path / name
        report = _report(workdir, "json")
        assert report["complete"] and report["failures"] == [] and report["errors"] == []
        # every operation but GET /v1/openapi.json: Schemathesis, given a document's URL, leaves
        # out the operation at that URL
        tested = len(OPERATIONS) - 1
        assert report["operations"]["tested"] == report["operations"]["total"] == tested
        phases = {phase: data["status"] for phase, data in report["phases"].items()}
        expected = {"examples", "coverage", "fuzzing"} | (
            {"stateful"} if name == "authenticated" else set()
        )
        assert all(phases[phase] == "success" for phase in expected), phases

        entries = _report(workdir, "har")["log"]["entries"]
        sent = collections.Counter(
            _operation(e["request"]["method"], e["request"]["url"]) for e in entries
        )
        assert all(sent[op] >= MIN_CASES for op in API), (
            name,
            {f"{m} {p}": sent[m, p] for m, p in API},
        )
        summary[name] = {f"{m} {p}": sent[m, p] for m, p in sorted(API)}

        statuses = collections.Counter(
            (*_operation(e["request"]["method"], e["request"]["url"]), e["response"]["status"])
            for e in entries
        )
        if name == "unauthenticated":
            assert not [s for s in statuses if s[2] < 300 and (s[0], s[1]) in API], statuses
            continue
        # The cases reached the success paths: first calls, not only replays and not-founds.
        first = collections.Counter(
            _operation(e["request"]["method"], e["request"]["url"])
            for e in entries
            if 200 <= e["response"]["status"] < 300
            and not any(
                h["name"].lower() == "idempotent-replayed" for h in e["response"]["headers"]
            )
        )
        for op in API:
            assert first[op] >= 1, (op, statuses)
        summary["first successes"] = {f"{m} {p}": first[m, p] for m, p in sorted(API)}
        links = re.search(r"API Links:\s+(\d+) covered", outputs[name])
        assert links and int(links[1]) >= 5, outputs[name][-2000:]
    print(json.dumps(summary, indent=2))
