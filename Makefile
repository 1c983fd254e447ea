# tevo-hold. `make run` starts the demo server, `make test` runs every test; both set up .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck check clean redis-server browser docs wrk bench

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The embedded default: no Redis needed; state in memory; demo key `demo-key`.
run: install
	$(BIN)/gunicorn -c server/gunicorn.conf.py server.wsgi:app

# Tests that need a real Redis start their own redis-server processes (alone, as a cluster
# with redis-cli, behind Sentinel, over TLS with certificates made by openssl) on free loopback
# ports.
redis-server:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || { \
	  echo "redis-server missing: installing Debian's redis-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "openssl missing: installing it (the TLS tests make certificates)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }

# The reference-page test (tests/test_docs.py) opens GET /docs in Debian's headless chromium
# (or the browser the CHROMIUM variable names); the guide's examples run with curl.
browser:
	@{ [ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1; } && \
	  command -v curl >/dev/null 2>&1 || { \
	  echo "chromium or curl missing: installing Debian's chromium and curl"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium curl; }

test: install redis-server browser
	$(BIN)/python -m pytest

# docs/openapi.json (the contract, generated from the code), then the guides into site/.
docs: install
	$(BIN)/python -m tevo_hold.openapi docs/openapi.json
	$(BIN)/mkdocs build --strict

# The benchmarks (tests/bench/, a few minutes): regenerate docs/benchmarks.md and
# docs/img/bench-*.png. They start their own redis-server and gunicorn on free loopback ports.
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "wrk missing: installing Debian's wrk"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

bench: $(BENCH_STAMP) redis-server wrk
	$(BIN)/python -m tests.bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache
