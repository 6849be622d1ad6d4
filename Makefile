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

PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: venv venv-demo venv-docs vllm-env systemd-env demo-model demo screenshots lint typecheck test test-fast test-e2e test-systemd bench clean

# One .venv; a stamp file per extra installed in it. The demo needs only the runtime and the
# `demo` extra, so `make demo` skips the dev tools (mypy, ruff, hypothesis...); `make test`
# after it adds them, and `make demo` after `make test` installs nothing (dev includes demo).
# pip is upgraded first: a current pip installs the demo's dependencies in less CPU time than
# Python 3.11's bundled 23.2 saves by skipping the upgrade (measured here).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed-demo

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[docs]'
	touch $@

# The supervisor with the dev tools (lint, type-check, tests).
venv: $(VENV)/.installed-dev

# The supervisor with what `niodoo-supervisor demo-model` needs: no dev tools.
venv-demo: $(VENV)/.installed-demo

# Pillow, for scripts/screenshots.py.
venv-docs: $(VENV)/.installed-docs

# The vLLM CPU build lives in its own venv outside the checkout (reused across clones).
vllm-env:
	bash scripts/setup-vllm-env.sh > /dev/null

# The real-systemd tier's container roots, cached outside the checkout (reused across clones).
# Needs root; elsewhere the tier skips itself, saying why.
systemd-env:
	if [ "$$(id -u)" = 0 ]; then bash scripts/setup-systemd-env.sh > /dev/null; fi

demo-model: venv-demo
	$(BIN)/niodoo-supervisor demo-model $(DEMO_DIR)

demo: venv-demo vllm-env demo-model
	export NIODOO_VLLM_PYTHON="$$(bash scripts/setup-vllm-env.sh)"
	exec $(BIN)/niodoo-supervisor run -c config/demo-cpu.yaml

# docs/console-*.png and .txt: the demo's console at start-up, ready, a lora_name request and
# a stop, captured in tmux and rendered (about 2 minutes; needs tmux and DejaVu Sans Mono).
screenshots: venv-demo venv-docs vllm-env demo-model
	$(BIN)/python scripts/screenshots.py

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

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
