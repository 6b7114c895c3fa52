# The front door. Every target installs what it needs through `make setup`;
# nothing depends on software installed by hand.
SHELL := /bin/bash
UV := "$(CURDIR)/scripts/uv"
PYTEST_ARGS ?=

.PHONY: setup up down status test test-unit lint format proto proto-check events-doc events-doc-check bench clean

setup: ## install uv if missing (scripts/uv), then the workspace and its binaries (nats-server, envoy, SecantusDB)
	@# Bytecode compiled at install: a machine with PYTHONDONTWRITEBYTECODE set (and a
	@# deployment's user, who cannot write the platform's folders) would otherwise compile
	@# every module again in every process it starts (the CLI took 2.6 s instead of 1.6 s).
	@$(UV) sync --all-packages --locked --quiet --compile-bytecode
	@# xds-protos ships old copies of opentelemetry-proto's modules; when its copy is the one
	@# installed last, the OTLP exporter fails at import. opentelemetry-proto's must win.
	@$(UV) run --no-sync python -c "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope" 2>/dev/null \
		|| $(UV) sync --all-packages --locked --quiet --compile-bytecode --reinstall-package opentelemetry-proto
	@$(UV) run --no-sync python -m compileall -q -j 0 libs services
	@# Debian's chromium for the portal's browser tests (they skip, saying why, without it).
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| echo "setup: could not install chromium; the portal's browser tests will skip"; fi
	@# NSS's certutil for `sluice tls trust`'s browser stores and its test (it skips without it).
	@if ! command -v certutil >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnss3-tools >/dev/null 2>&1 \
		|| echo "setup: could not install libnss3-tools; the NSS trust-store test will skip"; fi
	@$(UV) run --no-sync python -c "import sluice.common, sluice.sdk, sluice.v1" && echo "setup: workspace ready"

up: setup ## start the local platform and the demo endpoint (blue/green at 90/10, scored through Envoy)
	@$(UV) run --no-sync sluice up
	@$(UV) run --no-sync sluice demo

down: ## stop everything `make up` started; data stays in the state folder: /var/lib/sluice as root, else ~/.local/state/sluice (or $$SLUICE_STATE_DIR)
	@$(UV) run --no-sync sluice down

status: ## health of every component
	@$(UV) run --no-sync sluice status

test: setup proto-check ## every test: unit and integration (real nats-server, SecantusDB, Envoy)
	@$(UV) run --no-sync pytest --durations=25 $(PYTEST_ARGS)

test-unit: setup ## fast tests only, no servers
	@$(UV) run --no-sync pytest -m "not integration" $(PYTEST_ARGS)

lint: setup proto-check events-doc-check ## ruff format + ruff check + mypy (strict on src) + generated docs
	@$(UV) run --no-sync ruff format --check .
	@$(UV) run --no-sync ruff check .
	@$(UV) run --no-sync mypy libs/common/src libs/sdk/src libs/testing/src $(wildcard services/*/src)

format: setup
	@$(UV) run --no-sync ruff format .
	@$(UV) run --no-sync ruff check --fix .

proto: setup ## regenerate proto/src from proto/sluice/v1/*.proto
	@$(UV) run --no-sync python scripts/gen_proto.py

proto-check: ## fail if the generated code is older than the .proto files
	@$(UV) run --no-sync python scripts/gen_proto.py --check

events-doc: setup ## regenerate docs/events/asyncapi.{json,yaml} (faststream docs gen)
	@$(UV) run --no-sync python scripts/gen_asyncapi.py

events-doc-check: ## fail if docs/events is older than the event catalogue or the subscribers
	@$(UV) run --no-sync python scripts/gen_asyncapi.py --check

bench: setup ## every benchmark under bench/ (see bench/README.md)
	@$(UV) run --no-sync python bench/run.py

clean:
	rm -rf .sluice .pytest_cache .mypy_cache .ruff_cache
