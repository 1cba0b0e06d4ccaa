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
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
VPI_APT_PACKAGES := mmdebstrap systemd-container nftables iproute2 openssh-client

.PHONY: help setup test lint test-molecule test-arm demo demo-clean bench provision fetch view clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: files/hatcam/pyproject.toml requirements-dev.txt tests/host-deps.sh
	tests/host-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './files/hatcam[fetch,view]' -r requirements-dev.txt
	touch $@

$(AZURITE):
	npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@$(AZURITE_VERSION)

setup: $(VENV)/.installed $(AZURITE) ## install everything the tests need (apt, venv, Azurite)

lint: setup ## ruff, import contracts (.importlinter), yamllint, ansible-lint (production profile)
	ruff check files/hatcam tests bench
	lint-imports --no-cache
	yamllint -s .
	ansible-lint -q

test: setup lint ## the whole suite: pytest against real Azurite and redis-server, then molecule
	pytest -q --durations=25 tests
	$(MAKE) test-molecule

test-molecule: setup ## the real playbook on a booted virtual Pi (needs root: mounts, nftables)
	tests/host-deps.sh $(VPI_APT_PACKAGES)
	cd tests && $(SUDO) env PATH="$(PATH)" molecule test

test-arm: setup ## the real playbook on an arm64 virtual Pi under qemu-user (about 30 min; needs root)
	tests/host-deps.sh $(VPI_APT_PACKAGES) qemu-user-static binfmt-support
	cd tests && $(SUDO) env PATH="$(PATH)" molecule test -s arm64

DEMO_SECONDS ?= 60

demo: setup ## the whole product on a virtual Pi: provision, record (network cut midway), fetch, stitch
	tests/host-deps.sh $(VPI_APT_PACKAGES)
	$(SUDO) env PATH="$(PATH)" DEMO_SECONDS=$(DEMO_SECONDS) python -m tests.support.demo

demo-clean: ## stop and remove whatever a demo left behind
	$(SUDO) env PATH="$(PATH)" python -m tests.support.demo --clean

bench: setup ## measured figures beside their baselines -> bench/results.md (not part of test)
	python -m bench.run

HOST ?=
INVENTORY ?=
ARGS ?=

provision: $(VENV)/bin/ansible-playbook ## configure a Pi: make provision HOST=hatcam.local [INVENTORY=file] [ARGS="-e @my-vars.yml --ask-vault-pass"]
	@if [ -z "$(HOST)$(INVENTORY)" ]; then echo "usage: make provision HOST=hatcam.local | INVENTORY=inventory [ARGS='...']" >&2; exit 2; fi
	@mkdir -p .cache && printf '[hatcams]\n%s\n' "$(HOST)" > .cache/provision-inventory
	cd ansible && ansible-galaxy collection install -r requirements.yml >/dev/null
	cd ansible && ansible-playbook provision.yml -i $(if $(INVENTORY),$(abspath $(INVENTORY)),$(CURDIR)/.cache/provision-inventory) -e hatcam_device_keys_dir=$(CURDIR)/keys $(ARGS)

# The operator's laptop needs only ansible-core to start: the downloader role builds the
# fetch venv and writes the .env itself (no redis-server or Node.js).
FETCH_VENV ?= $(HOME)/.local/share/hatcam/fetch-venv
FETCH_ENV ?= $(HOME)/.config/hatcam/fetch.env
FETCH_ARGS ?=
FETCH_PLAYBOOK_ARGS ?=

$(VENV)/bin/ansible-playbook:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "ansible-core>=2.16,<2.19"

fetch: $(VENV)/bin/ansible-playbook ## download + stitch footage: make fetch FETCH_ARGS="--device hatcam1 --since today"
	ANSIBLE_CONFIG=ansible/ansible.cfg ansible-playbook -i localhost, ansible/fetch.yml \
	  -e hatcam_downloader_venv=$(FETCH_VENV) -e hatcam_downloader_env_file=$(FETCH_ENV) $(FETCH_PLAYBOOK_ARGS)
	$(FETCH_VENV)/bin/hatcam --env-file $(FETCH_ENV) fetch $(FETCH_ARGS)

VIEW_ARGS ?=

view: $(VENV)/bin/ansible-playbook ## the footage, stills and health in a browser (this computer): make view VIEW_ARGS="--port 8765"
	ANSIBLE_CONFIG=ansible/ansible.cfg ansible-playbook -i localhost, ansible/fetch.yml \
	  -e hatcam_downloader_venv=$(FETCH_VENV) -e hatcam_downloader_env_file=$(FETCH_ENV) $(FETCH_PLAYBOOK_ARGS)
	$(FETCH_VENV)/bin/hatcam --env-file $(FETCH_ENV) view $(VIEW_ARGS)

clean: ## remove the venv and caches
	rm -rf $(VENV) .cache .pytest_cache
