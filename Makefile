# MCP Bastion: the only entry points. `make up` runs the stack, `make test` tests it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo $(VENV)/bin/uv)
PACKAGES := libs/common services/auth services/keys services/tools services/audit
SRC := $(addsuffix /src,$(PACKAGES))
COMPOSE := docker compose -f deploy/compose.yaml --env-file deploy/.env
export TESTCONTAINERS_RYUK_DISABLED := true
# Debian's engine has no buildx: build with the classic BuildKit path, without the warning.
export COMPOSE_BAKE := false

.PHONY: help install lock acl env docker browser up down clean logs ps lint test unit integration faults fuzz soak bench demo

help:
	@echo "make up          build and start the stack, wait until healthy, print the URLs"
	@echo "make down        stop the stack (data kept; 'make clean' also deletes volumes)"
	@echo "make logs        follow the services' JSON logs"
	@echo "make test        unit tests, then the integration tests against a fresh stack"
	@echo "make fuzz        schemathesis against keys and audit, 1000 cases per operation"
	@echo "make soak        mixed load on the stack (30 min): memory, p99, audit lag"
	@echo "make lint        ruff and mypy --strict"
	@echo "make install     the virtual environment ($(VENV)) from requirements.lock"

# One environment for the workspace: the hash-pinned lock, then our packages without deps.
install: $(VENV)/.installed
$(VENV)/.installed: requirements.lock pyproject.toml $(addsuffix /pyproject.toml,$(PACKAGES))
	@command -v uv >/dev/null 2>&1 || [ -x $(VENV)/bin/uv ] || { python3 -m venv $(VENV) && $(VENV)/bin/pip install -q 'uv>=0.5'; }
	@[ -x $(PY) ] || $(UV) venv -q --python python3 $(VENV)
	$(UV) pip sync -q --python $(PY) --require-hashes requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation $(addprefix -e ,$(PACKAGES))
	@touch $@

# Regenerate the lock after changing a pyproject.toml (needs the registry).
lock:
	$(UV) lock
	$(UV) export -q --format requirements-txt --no-emit-workspace --all-packages --all-groups --frozen -o requirements.lock

env:
	@bash deploy/gen-env.sh deploy/.env

# Rewrite deploy/redis/users.acl from each service's key owner (after changing one).
acl: install
	$(PY) deploy/redis_acl.py

# Engine, Compose plugin and base image; records the base image to build from.
docker:
	@bash deploy/setup.sh > deploy/.base-image

up: env docker
	BASE_IMAGE=$$(cat deploy/.base-image) $(COMPOSE) up --build --detach --wait --wait-timeout 180
	@echo
	@echo "MCP Bastion is up:"
	@echo "  auth   http://localhost:$${AUTH_PORT:-8001}   (OAuth 2.1 authorization server)"
	@echo "  keys   http://localhost:$${KEYS_PORT:-8002}   (API keys)"
	@echo "  tools  http://localhost:$${TOOLS_PORT:-8003}/mcp   (MCP server)"
	@echo "  audit  http://localhost:$${AUDIT_PORT:-8004}   (audit record and reports)"
	@echo "  admin user: $$(grep ^BOOTSTRAP_ADMIN_USERNAME deploy/.env | cut -d= -f2) (password in deploy/.env)"

down:
	@[ -f deploy/.env ] && $(COMPOSE) down || true

clean:
	@[ -f deploy/.env ] && $(COMPOSE) down --volumes || true

logs:
	$(COMPOSE) logs --follow --tail 100

ps:
	$(COMPOSE) ps

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(SRC) deploy/runtime_lock.py deploy/redis_acl.py
	$(PY) deploy/redis_acl.py --check

unit: install
	$(VENV)/bin/pytest $(wildcard $(addsuffix /tests,$(PACKAGES))) tests/deploy bench/tests

# Debian's Chromium for the sign-in tests in a real browser (never a browser download).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium fonts-dejavu-core >/dev/null; }; } || \
		{ echo "make: chromium is missing; install Debian's chromium package"; exit 1; }

integration: install docker browser
	BASE_IMAGE=$$(cat deploy/.base-image) $(VENV)/bin/pytest tests/integration

# Faults under load against a stack of their own (tests/faults): Redis stopped and
# wiped, the audit collector killed; each case prints what it counted.
faults: install docker
	BASE_IMAGE=$$(cat deploy/.base-image) $(VENV)/bin/pytest -s tests/faults

test: unit integration faults

# schemathesis against keys and audit over HTTP, 1000 cases per operation and mode (make
# test runs 15); prints the cases each operation got.
fuzz: install docker
	BASTION_FUZZ_EXAMPLES=$${BASTION_FUZZ_EXAMPLES:-1000} BASE_IMAGE=$$(cat deploy/.base-image) \
		$(VENV)/bin/pytest -s tests/integration/test_fuzz.py

# Against a stack started with `make up`: the full flow for four roles, then the report.
demo: install
	$(PY) -m demo.run

# The stack under a steady mixed load for SOAK_MINUTES (30) at SOAK_RATE calls/s (200):
# memory, p99 and audit lag over time -> bench/results/soak.{json,png}.
soak: install docker
	$(PY) bench/soak.py --minutes $${SOAK_MINUTES:-30} --rate $${SOAK_RATE:-200}

# Every benchmark in one run -> bench/results/latest.{json,md,png}; then
# `$(PY) bench/readme_table.py` copies its summary table into README.md.
# BENCH_ARGS=--quick for a short run, --table-only for issue 23's measures alone.
# Needs wrk, redis-server and valgrind (installed here when missing, as root); the
# peers are installed by bench/peers.py into bench/.peers/.
bench: install
	@command -v wrk >/dev/null && command -v redis-server >/dev/null && command -v valgrind >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk redis-server valgrind >/dev/null; }
	$(PY) bench/run.py $(BENCH_ARGS)
