# One command, one job. `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/ourvidz/v1/*.proto)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml cli/pyproject.toml | cksum | cut -d' ' -f1)
GEN_STAMP := ourvidz/v1/.generated
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install protos protos-check lint fmt up test test-deploy test-api test-faults test-browser browser-deps test-slow bench clean

help: ## Print every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# pip's own lines show the progress of a first install (a few minutes); the
# packages already there are left out, so a re-install lists only what changes
# (grep finding no line is no failure; pip's status is the step's).
PIP_INSTALL := set -o pipefail; $(BIN)/pip install
PIP_SHOWN := | { grep --line-buffered -v '^Requirement already satisfied' || true; }

$(STAMP): pyproject.toml cli/pyproject.toml
	@test -x $(BIN)/python || { echo "==> creating $(VENV) with $(PY)"; $(PY) -m venv $(VENV); }
	@# torch first, from its CPU build where one is offered, so the model extra
	@# does not pull the CUDA packages on a machine without a GPU.
	@echo "==> installing $(TORCH), the largest part ..."
	@$(PIP_INSTALL) $(TORCH) $(PIP_SHOWN)
	@echo "==> installing ourvidz, the ourvidz CLI and their dependencies ..."
	@$(PIP_INSTALL) -e '.[models,embedded,dev]' -e ./cli $(PIP_SHOWN)
	@rm -f $(VENV)/.installed-*; touch $@
	@echo "==> $(VENV) is ready"

install: $(STAMP) $(GEN_STAMP) ## Create .venv with every dependency and generate the stubs

$(GEN_STAMP): $(STAMP) $(PROTOS)
	$(BIN)/python -m ourvidz.protogen
	@touch $@

protos: $(STAMP) ## Regenerate the Python stubs (and .pyi) from protos/
	$(BIN)/python -m ourvidz.protogen
	@touch $(GEN_STAMP)

protos-check: install ## Fail when the protos do not compile or lint
	$(BIN)/python -m ourvidz.protogen --check
	npx --yes @bufbuild/buf@1 lint

lint: install ## buf lint and ruff
	npx --yes @bufbuild/buf@1 lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install ## Format the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

up: install ## Start everything (embedded PostgreSQL, NATS, storage) with tiny models; gateway on 127.0.0.1:8080
	$(BIN)/python -m ourvidz_dev.up

test: install ## The whole fast suite against real PostgreSQL, NATS JetStream and S3, schemathesis included
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not browser and not faults" --ignore=tests/browser --ignore=tests/faults $(PYTEST_ARGS)

test-deploy: install ## The Kubernetes overlays (also part of make test): rendered with the pinned kubectl, validated, policy-checked
	$(BIN)/python -m pytest -q tests/deploy $(PYTEST_ARGS)

test-api: install ## schemathesis alone (also part of make test): every operation of /openapi.json against the in-process mesh
	$(BIN)/python -m pytest -q -m api tests/api $(PYTEST_ARGS)

test-faults: install ## The fault suite: real processes killed and stopped (10-15 min); see docs/RELIABILITY.md
	$(BIN)/python -m pytest -q -m faults tests/faults $(PYTEST_ARGS)

CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@# Debian's Chromium: Playwright never downloads a browser here.
	@if command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; \
	else echo "install Chromium and set CHROMIUM=/path/to/chromium" >&2; exit 1; fi

browser-deps: install $(CHROMIUM)
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install -q -e '.[browser]'

test-browser: browser-deps ## The web studio in headless Chromium (Playwright); screenshots in .artifacts/browser
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -m browser tests/browser $(PYTEST_ARGS)

test-slow: install ## Slow tests (full-size shapes on CPU)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: install ## Timings on the tiny preset, the control-plane load bench, and full-random where a GPU is present; see docs/BENCHMARKS.md
	$(BIN)/python -m ourvidz_dev.bench

clean: ## Remove the venv, generated stubs and local data
	rm -rf $(VENV) .data ourvidz/v1/*_pb2*.py* $(GEN_STAMP)
