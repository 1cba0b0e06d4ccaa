# hatcam: provision a Pi, fetch footage, run the demo and the tests.
# Every target installs what it needs itself (a fresh Debian machine has none of it).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.35.0
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup test lint clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: files/hatcam/pyproject.toml requirements-dev.txt tests/host-deps.sh
	tests/host-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./files/hatcam -r requirements-dev.txt
	touch $@

$(AZURITE):
	npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@$(AZURITE_VERSION)

setup: $(VENV)/.installed $(AZURITE) ## install everything the tests need (apt, venv, Azurite)

lint: setup ## ruff on the package and the tests
	ruff check files/hatcam tests

test: setup lint ## the whole suite, against real Azurite and redis-server
	pytest -q tests

clean: ## remove the venv and caches
	rm -rf $(VENV) .cache .pytest_cache
