# rsign: `make run` serves the Son La demo, `make test` runs every check. Both bootstrap what they
# need: the Debian packages when missing (softhsm2; for the PDF tests poppler-utils' pdfsig and
# pdftotext, libnss3-tools' certutil, fonts-dejavu-core for the stamp), a virtualenv, the Python
# packages (the client, plus the server, pdf and dev extras).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/rsign/v1/*.proto)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck unit proto proto-check bench bootstrap softhsm testtools clean

run: bootstrap
	$(BIN)/rsign demo

test: bootstrap proto-check lint typecheck unit

bootstrap: softhsm testtools $(STAMP)

softhsm:
	@command -v softhsm2-util >/dev/null || { \
	  echo "installing Debian package softhsm2"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq softhsm2 >/dev/null; }

# What the tests use beyond Python: poppler's pdfsig and pdftotext (certutil builds pdfsig's NSS
# trust store) check the signed PDFs, DejaVu Sans is the stamp's font (Vietnamese diacritics), and
# headless Debian chromium (driven by Playwright, never its own browser download) the passkey pages.
testtools:
	@missing=""; \
	command -v pdfsig >/dev/null || missing="$$missing poppler-utils"; \
	command -v certutil >/dev/null || missing="$$missing libnss3-tools"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[server,pdf,dev]'
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
