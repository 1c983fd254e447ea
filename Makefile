# tevo-hold. `make run` starts the demo server, `make test` runs every test; both set up .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck check clean redis-server

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

test: install redis-server
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
