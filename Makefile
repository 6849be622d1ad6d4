# The two commands a fresh machine needs (see README.md):
#   make demo   set everything up, then run the supervisor on a real vLLM (CPU) with a tiny model
#   make test   set everything up, then lint, type-check and run every test tier (real vLLM included)
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := var/demo-model

.PHONY: venv vllm-env systemd-env demo-model demo lint typecheck test test-fast test-e2e test-systemd bench clean

$(BIN)/niodoo-supervisor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/niodoo-supervisor

# The vLLM CPU build lives in its own venv outside the checkout (reused across clones).
vllm-env:
	bash scripts/setup-vllm-env.sh > /dev/null

# The real-systemd tier's container roots, cached outside the checkout (reused across clones).
# Needs root; elsewhere the tier skips itself, saying why.
systemd-env:
	if [ "$$(id -u)" = 0 ]; then bash scripts/setup-systemd-env.sh > /dev/null; fi

demo-model: venv
	$(BIN)/niodoo-supervisor demo-model $(DEMO_DIR)

demo: venv vllm-env demo-model
	export NIODOO_VLLM_PYTHON="$$(bash scripts/setup-vllm-env.sh)"
	exec $(BIN)/niodoo-supervisor run -c config/demo-cpu.yaml

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: venv
	$(BIN)/mypy

# Everything but the real-vLLM and real-systemd tiers: seconds.
test-fast: lint typecheck
	$(BIN)/pytest -q -m "not e2e and not systemd"

test-e2e: venv vllm-env demo-model
	export NIODOO_VLLM_PYTHON="$$(bash scripts/setup-vllm-env.sh)"
	$(BIN)/pytest -q -m e2e -s

test-systemd: venv systemd-env
	$(BIN)/pytest -q -m systemd -rs

test: lint typecheck vllm-env systemd-env demo-model
	export NIODOO_VLLM_PYTHON="$$(bash scripts/setup-vllm-env.sh)"
	$(BIN)/pytest -q -rs

bench: venv
	$(BIN)/python benchmarks/logpump_bench.py
	$(BIN)/python benchmarks/config_bench.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
