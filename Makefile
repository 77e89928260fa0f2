# presence: every target uses the repository's own .venv (made by `make install`).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECOVERY ?= recovery
WORKERS ?= 2

.PHONY: install lock system-deps test test-unit demo docs-assets stack-up stack-down stack-status \
        run run-bounded recovery-init recovery-reset bench clean

install: $(STAMP)
	@NATIVE=$(NATIVE) bash scripts/build_native.sh

# Then the optional compiled reader (native/, Rust): built when cargo is there,
# else one line and the pure-Python reader (`make install NATIVE=0` skips it).
NATIVE ?= 1

# From the lock file only: every package pinned and checked against its sha256
# (requirements-test.lock: runtime + test + bench extras + the build backend), then
# the project itself, editable, built with that same locked setuptools.
$(STAMP): pyproject.toml requirements.lock requirements-test.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-test.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) scripts/check_lock.py
	@touch $(STAMP)

# Re-resolve the lock files from pyproject.toml (after adding or changing a
# dependency there): keeps current pins. `make lock UPGRADE=1` moves every pin
# to the newest version pyproject.toml allows. Then `make install` and the tests.
lock:
	@UPGRADE=$(UPGRADE) PYTHON=$(PYTHON) bash scripts/lock.sh

# Debian's chromium, for the dashboard tests (Playwright drives the system browser).
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation; \
	fi

# The walkthrough: simulate 10 cities, run the dataflow bounded with segments
# city;city,vehicle_type;h3:8, report, per-city report, charts, zone map (demo-output/).
demo: install stack-up
	@bash scripts/demo.sh

# README's demo sample, docs/demo-chart.png and docs/dashboard.png, regenerated
# from a real `make demo` run on the local stack (scripts/docs_assets.py --help).
docs-assets: install system-deps stack-up
	$(PY) scripts/docs_assets.py

stack-up:
	@bash stack/stack.sh up

stack-down:
	@bash stack/stack.sh down

stack-status:
	@bash stack/stack.sh status

# The whole suite: unit, dataflow and (against the local stack) integration tests.
test: install system-deps stack-up
	$(PY) -m pytest -q

# Fast tests only: no Kafka or MongoDB needed.
test-unit: install
	$(PY) -m pytest -q -m 'not stack and not chart'

# Idempotent: an initialised directory is left as it is.
recovery-init: install
	@$(VENV)/bin/presence recovery init $(RECOVERY)

# Deletes the state (only the *.sqlite3 partitions) and makes fresh partitions.
recovery-reset: install
	@$(VENV)/bin/presence recovery reset $(RECOVERY)

# Live: runs until stopped (Ctrl-C); resumes from $(RECOVERY)/.
run: install recovery-init
	$(PY) -m presence.run dataflow -w $(WORKERS) -r $(RECOVERY) -s 5 -b 0

# Bounded: reads to the current end of every partition, writes every row, exits.
run-bounded: install recovery-init
	PRESENCE_STOP_AT_END=1 $(PY) -m presence.run dataflow -w $(WORKERS) -r $(RECOVERY) -s 5 -b 0

# Benchmarks side by side (docs/benchmarks.md): presence vs a raw-consumer ceiling, a
# hand-written loop, stock Bytewax windows and Quix Streams (own venv). BENCH_ARGS e.g.
# "--pings 100000 --no-latency --no-state". Writes bench/results/<date>.md and .json.
bench: install stack-up
	@if [ ! -f bench/.quix-venv/.installed ] || [ bench/requirements-quix.lock -nt bench/.quix-venv/.installed ]; then \
	  $(PYTHON) -m venv bench/.quix-venv && \
	  bench/.quix-venv/bin/python -m pip install -q --require-hashes -r bench/requirements-quix.lock && \
	  touch bench/.quix-venv/.installed; \
	fi
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV)-lock .pytest_cache .hypothesis demo-output

# Render deploy/helm/presence and validate it offline (CHART_ARGS e.g. "--set replicas=4");
# builds helm and deploy/validate from the Go module proxy once, cached in ~/.cache/presence/bin.
chart:
	@bash deploy/tools.sh render $(CHART_ARGS) >/dev/null && echo "deploy/helm/presence renders and validates"
