# Krypton: two commands on a fresh machine with Python 3.11, make and git.
#   make up    installs what is needed and runs the whole platform with demo data
#   make test  installs what is needed and runs lint, types and the test suite
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
export UV_PROJECT_ENVIRONMENT := .venv

.PHONY: install up test lint pytest bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml apps/*/pyproject.toml)
	$(UV) sync --frozen --all-packages
	touch $@

install: .venv/.synced

up: install
	$(UV) run --frozen krypton up --demo

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs/krypton/src services/*/src apps/*/src
	MYPYPATH=benchmarks $(UV) run --frozen mypy benchmarks

pytest: install
	$(UV) run --frozen pytest -q $(PYTEST_ARGS)

test: lint pytest

bench: install
	$(UV) run --frozen python benchmarks/run_all.py

clean:
	rm -rf .venv .tools .state
