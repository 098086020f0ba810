# Homing: `make run` starts a development server, `make test` runs every gate and test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= var
DEV_DOMAIN ?= example.test
DEV_USER ?= demo@$(DEV_DOMAIN)
# Debian packages the test suite drives as real clients (postfix: its smtp-source drives the
# benchmark smoke test and its smtp-sink plays the remote MX in the outbound tests; preseeded
# "No configuration", so no system Postfix is set up and its daemon is never started).
DEBIAN_TEST_PACKAGES := swaks fetchmail getmail6 curl msmtp postfix isync offlineimap3

.PHONY: run test venv deps-debian lint typecheck contracts pytest bench clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing Debian's python3-venv" >&2; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else sudo apt-get install -y python3-venv; fi; \
	  $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

deps-debian:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (tests that need them are skipped; CI installs them)"; fi; fi

run: venv
	@if [ ! -f $(DATA)/homing.toml ]; then \
	  $(BIN)/homing init --data $(DATA) --domain $(DEV_DOMAIN) --hostname localhost --dev >/dev/null; fi
	@if ! $(BIN)/homing --config $(DATA)/homing.toml account list | grep -q "^$(DEV_USER)"; then \
	  pw=$$($(BIN)/homing --config $(DATA)/homing.toml account add $(DEV_USER) | sed -n 's/^Password for .*: //p'); \
	else pw=$$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 20); \
	  echo "$$pw" | $(BIN)/homing --config $(DATA)/homing.toml account passwd $(DEV_USER) --password-stdin >/dev/null; fi; \
	echo; echo "Homing development server (data in ./$(DATA))"; \
	echo "  account:  $(DEV_USER)   password: $$pw   (new each 'make run')"; \
	echo "  receive:  swaks --server 127.0.0.1:2525 --to $(DEV_USER) --from you@elsewhere.test"; \
	echo "  submit:   swaks --server 127.0.0.1:2587 --tls --auth PLAIN --auth-user $(DEV_USER) --auth-password $$pw --from $(DEV_USER) --to $(DEV_USER)"; \
	echo "  IMAP:     curl -k --user '$(DEV_USER):$$pw' 'imaps://127.0.0.1:2993/INBOX;UID=1'"; \
	echo "  POP3:     curl -k --user '$(DEV_USER):$$pw' pop3s://127.0.0.1:2995/1"; \
	echo "  store:    $(BIN)/homing --config $(DATA)/homing.toml mailbox list $(DEV_USER)"; \
	echo "  stop:     Ctrl-C"; echo
	@exec $(BIN)/homing --config $(DATA)/homing.toml serve

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

pytest: venv deps-debian
	$(BIN)/pytest -n 2 -q

test: lint typecheck contracts pytest

# Side by side with Postfix and Dovecot (bench/README.md): `make bench`, `make bench BENCH_ARGS=--quick`.
bench: venv
	bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
