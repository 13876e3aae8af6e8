# One place for every command a developer or CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test check lint types system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[pipecat,test,bench]'
	touch $(STAMP)

# The oldest uvicorn pyproject.toml admits, beside the venv: tests/integration/
# test_uvicorn_floor.py reruns the hub's unit tests on it.
UVICORN_FLOOR := $(VENV)/uvicorn-floor
UVICORN_FLOOR_VERSION := $(shell sed -n 's/.*"uvicorn\[standard\]>=\([0-9.]*\)".*/\1/p' pyproject.toml)
$(UVICORN_FLOOR)/.installed: pyproject.toml $(STAMP)
	rm -rf $(UVICORN_FLOOR)
	$(PY) -m pip install -q --no-deps --target $(UVICORN_FLOOR) 'uvicorn==$(UVICORN_FLOOR_VERSION)'
	touch $@

# Tests start their own redis-server processes on free ports, run nginx on
# loopback in front of hub nodes, check the deploy/ files with promtool
# (Debian ships it in the prometheus package), and drive the console page in
# Debian's headless chromium (playwright's own browser download needs a network
# the machines lack), with a font so that screenshots show text.
APT := DEBIAN_FRONTEND=noninteractive apt-get
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || missing="$$missing nginx"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v redis-server >/dev/null && command -v promtool >/dev/null && [ -x /usr/bin/chromium ]

run: $(STAMP)
	$(VENV)/bin/bushub serve

# The suite runs in TEST_JOBS processes (pytest-xdist); tests marked serial bound time
# under faults or load, so they run afterwards, alone. Exit status 5 (nothing
# selected, e.g. PYTEST_ARGS naming a file without serial tests) is not a failure.
TEST_JOBS ?= 2
test: $(STAMP) $(UVICORN_FLOOR)/.installed system-deps
	$(PY) -m pytest -q -n $(TEST_JOBS) -m "not serial" $(PYTEST_ARGS); \
	  status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ] || exit $$status
	$(PY) -m pytest -q -m serial $(PYTEST_ARGS); \
	  status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ] || exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: $(STAMP)
	$(VENV)/bin/mypy

check: lint types test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
