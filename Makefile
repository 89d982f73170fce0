# One-command set-up: `make repro` runs the pipeline, `make test` runs the tests.
# .venv is (re)built only when requirements.lock or pyproject.toml change (the stamp's name is their hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
FASHION_DIR := /usr/share/datasets/fashion-mnist
PORT ?= 5000

# Stage commands run `python`: it must be the venv's, which has ganops installed.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := true
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# apt-get installs below never stop to ask (a comment on the line would become part of the value).
export DEBIAN_FRONTEND := noninteractive

.PHONY: help setup repro test ui data-package test-packages clean-venv
.DEFAULT_GOAL := help

help:
	@echo "make repro   set up .venv and run the pipeline (dvc repro)"
	@echo "make test    set up .venv and run the test suite"
	@echo "make ui      MLflow UI on http://127.0.0.1:$(PORT) over ./mlflow.db (make ui PORT=5001)"

$(STAMP): requirements.lock pyproject.toml
	@rm -f $(VENV)/.installed-*
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP)

# The default dataset's first mirror is Debian's package; install it when we can (root, apt, absent).
data-package:
	@if [ ! -d $(FASHION_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	    && grep -q 'dataset: *fashion-mnist' params.yaml; then \
	  echo "installing dataset-fashion-mnist (Debian package) for an offline first mirror"; \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
	    || echo "could not install dataset-fashion-mnist; download will try the other mirrors"; \
	fi

# What some tests drive: Chromium + chromedriver (the web page, the MLflow UI) and PostgreSQL (a
# shared MLflow server; Debian keeps initdb off PATH). Installed when we can (root, apt, absent);
# otherwise those tests skip, and pytest's summary (-ra) says why.
test-packages:
	@missing=""; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
	  || missing="$$missing postgresql"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing (Debian packages) for the browser and PostgreSQL tests"; \
	  (apt-get install -y -qq $$missing || (apt-get update -qq && apt-get install -y -qq $$missing)) \
	    || echo "could not install$$missing: the tests that need them will skip and say why"; \
	elif [ -n "$$missing" ]; then \
	  echo "missing$$missing (not root with apt-get): the tests that need them will skip and say why"; \
	fi

repro: setup data-package
	$(BIN)/dvc repro

# Test files run in parallel, one process per core by default (a module's tests stay in one process,
# so its fixtures are built once): `make test TEST_JOBS=0` runs them all in one process.
TEST_JOBS ?= auto
test: setup test-packages
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

# No MLflow background job runners: they start 8 processes, slow on a small machine and unused here.
ui: export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT) --workers 1

clean-venv:
	rm -rf $(VENV)
