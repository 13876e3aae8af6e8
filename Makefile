# One place for every command a developer or CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test check lint types redis-server clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[pipecat,test,bench]'
	touch $(STAMP)

# Integration tests start their own redis-server processes on free ports.
redis-server:
	@command -v redis-server >/dev/null || { \
	  (apt-get update -qq || sudo apt-get update -qq) && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server || \
	   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server); }
	@command -v redis-server >/dev/null

run: $(STAMP)
	$(VENV)/bin/bushub serve

test: $(STAMP) redis-server
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: $(STAMP)
	$(VENV)/bin/mypy

check: lint types test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
