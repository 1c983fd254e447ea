"""The wheel a vendor installs: built from the project's own files, it carries everything the
package reads at run time, and works installed away from this checkout.

The editable install the other tests use reads the Lua scripts, the docs page and the demo
listings from the source tree, so it would go on working if the wheel left them out (package data
that ``pyproject.toml`` does not declare). Here the wheel is built from a copy of the files that
make up the package (``pip wheel``, as a vendor's build would) and installed into a folder of its
own, and a process that imports it from there serves a hold on the embedded default, the contract,
the docs page and its files, and runs the ``tevo-hold`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import ROOT

#: What the wheel is built from: the package and the files its metadata names.
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "tevo_hold")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("tevo_hold-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed alone (its dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("installed")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "-t", str(target), wheel],
        check=True,
        timeout=300,
    )
    return target


def _package_files() -> Iterator[str]:
    """Every file of the package in the source tree, as a path in the wheel."""
    for path in sorted((ROOT / "tevo_hold").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path.relative_to(ROOT).as_posix()


def test_the_wheel_carries_every_file_of_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode("utf-8")
    expected = list(_package_files())
    assert [name for name in expected if name not in names] == []
    # the kinds of file that a forgotten package-data pattern would leave out
    for kind in (".lua", ".html", ".json", "py.typed"):
        assert any(name.endswith(kind) for name in expected), kind
    assert "tevo-hold = tevo_hold.cli:main" in scripts
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert declared == {"tevo-hold": "tevo_hold.cli:main"}


#: Run from the installed copy: a hold on the embedded default, the contract, the docs page.
_SMOKE = """
import json, re
import tevo_hold
from tevo_hold import create_app
app = create_app({"TEVO_HOLD_API_KEYS": "k"})
client = app.test_client()
held = client.post("/v1/holds", headers={"X-API-Key": "k"},
                   json={"remote_id": "demo-1", "quantity": 2, "global_id": "order-1"})
invoiced = client.post("/v1/invoices", headers={"X-API-Key": "k"},
                       json={"global_id": "order-1", "tevo_order_id": 4711})
contract = client.get("/v1/openapi.json")
page = client.get("/docs")
assets = re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.get_data(as_text=True))
print(json.dumps({
    "file": tevo_hold.__file__,
    "held": [held.status_code, held.json["status"]],
    "invoiced": [invoiced.status_code, invoiced.json["status"]],
    "paths": sorted(contract.json["paths"]),
    "page": [page.status_code, page.mimetype, len(page.data)],
    "assets": {url: [client.get(url).status_code, len(client.get(url).data)] for url in assets},
}))
"""


def _run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("TEVO_HOLD_REDIS_URL", None)  # the embedded default
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=120
    )


def test_the_installed_wheel_serves_from_its_own_files(installed: Path, tmp_path: Path) -> None:
    done = _run_installed(installed, tmp_path, sys.executable, "-c", _SMOKE)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(installed)  # not this checkout's editable copy
    assert seen["held"] == [201, "held"]
    assert seen["invoiced"] == [201, "invoiced"]
    assert {"/v1/holds", "/v1/releases", "/v1/invoices"} <= set(seen["paths"])
    status, mimetype, size = seen["page"]
    assert (status, mimetype) == (200, "text/html") and size > 0
    # the page's own files (Swagger UI's, shipped by a dependency, served by the package)
    assert any(url.endswith(".js") for url in seen["assets"]), seen["assets"]
    assert all(code == 200 and length > 0 for code, length in seen["assets"].values())


def test_the_installed_command_runs(installed: Path, tmp_path: Path) -> None:
    command = installed / "bin" / "tevo-hold"
    done = _run_installed(installed, tmp_path, sys.executable, str(command), "--help")
    assert "check" in done.stdout and "worker" in done.stdout


def test_the_source_archive_is_the_whole_project(tmp_path: Path) -> None:
    """Built from the files git tracks, as a release would be: the server, the docs, the tests
    with the helpers they import and the Makefile must all be in it, or its own tests cannot
    even be collected and the README's two commands do not run."""
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, text=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (archive,) = out.glob("tevo_hold-*.tar.gz")
    with tarfile.open(archive) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    expected = {
        "LICENSE",
        "Makefile",
        "mkdocs.yml",
        ".ci/run",
        "server/wsgi.py",
        "server/gunicorn.conf.py",
        "docs/index.md",
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/servers.py",
        "tests/recording_pos.py",
        "tevo_hold/lua/fused.lua",
    }
    assert expected <= names, sorted(expected - names)
    assert not any("__pycache__" in name for name in names)


def test_the_installed_wsgi_app_logs_a_json_line_per_request(
    installed: Path, tmp_path: Path
) -> None:
    """What the guides run from an installed package (``gunicorn 'tevo_hold.wsgi:app'``): the
    access log the README promises, where ``tevo_hold:create_app()`` alone logged nothing."""
    script = (
        "import logging\n"
        "from tevo_hold.wsgi import app\n"
        "r = app.test_client().get('/v1/holds/nothing', headers={'X-API-Key': 'demo-key'})\n"
        "print(r.status_code)\n"
        "logging.shutdown()\n"  # the batched access line, written before exit
    )
    done = _run_installed(installed, tmp_path, sys.executable, "-c", script)
    assert done.stdout.strip() == "404"
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "tevo_hold.access"]
    assert len(access) == 1 and access[0]["status"] == 404, done.stderr
