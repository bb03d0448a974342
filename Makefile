# Two entry points: `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean check-aarch64

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is installed first, by itself: it is a CPU build on local disk, and the
# [train] range then needs nothing more (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,bench,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/malm demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check malm tests benchmarks
	$(BIN)/mypy malm/sdk malm/edge_index
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900

bench: $(STAMP)
	$(BIN)/malm bench --out benchmarks/results

# linux/aarch64 (a Jetson's CPU) under qemu user-mode emulation: installs the base runtime in an arm64 Debian
# root and answers `malm query`. Needs root, qemu-user-static and debootstrap; slow, so not in `make test`.
check-aarch64: $(STAMP)
	scripts/check_aarch64.sh $(BIN)/python

clean:
	rm -rf $(VENV) runs
