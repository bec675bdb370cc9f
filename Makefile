# rsign: `make run` serves the Son La demo, `make test` runs every check. Both bootstrap what they
# need: the Debian softhsm2 package when missing, a virtualenv, the Python packages.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/rsign/v1/*.proto)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck unit proto proto-check bench bootstrap softhsm clean

run: bootstrap
	$(BIN)/rsign demo

test: bootstrap proto-check lint typecheck unit

bootstrap: softhsm $(STAMP)

softhsm:
	@command -v softhsm2-util >/dev/null || { \
	  echo "installing Debian package softhsm2"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq softhsm2 >/dev/null; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: bootstrap
	$(BIN)/ruff check rsign tests
	$(BIN)/lint-imports

typecheck: bootstrap
	$(BIN)/mypy rsign tests

# Two workers (this machine has two cores); a test file stays on one worker (--dist loadfile):
# files share a service fixture; each PostgreSQL test makes a database of its own.
unit: bootstrap
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: bootstrap
	$(BIN)/rsign bench

proto: bootstrap
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# The generated code is committed; CI proves it matches the .proto files.
proto-check: bootstrap
	@tmp=$$(mktemp -d); \
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS); \
	for f in $$tmp/rsign/v1/*.py*; do \
	  diff -q $$f rsign/v1/$$(basename $$f) >/dev/null || { echo "generated $$(basename $$f) is stale: run 'make proto'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated gRPC code is current"

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
