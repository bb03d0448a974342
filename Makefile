# Two entry points: `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint typecheck bench clean check-aarch64 browser web

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is installed first, by itself: it is a CPU build on local disk, and the
# [train] range then needs nothing more (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,bench,dev,docs,e2e,tensorboard,plot]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/malm demo --out runs/demo

# The browser tests (the demo's report.html, the cooking-assistant app) drive Debian's chromium headless.
# As root on Debian/Ubuntu it is installed here; elsewhere install it yourself, or set
# MALM_SKIP_BROWSER_TESTS=1 to leave those tests out knowingly (pytest prints that they were skipped and why).
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$MALM_SKIP_BROWSER_TESTS" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make test: the browser tests need chromium (sudo apt-get install chromium), or MALM_SKIP_BROWSER_TESTS=1"; \
	  exit 1; fi

# The documentation site (docs/ + mkdocs.yml) into build/site; --strict turns a broken link, a page missing
# from the navigation or an API docstring that cannot be rendered into a failure (not --quiet: it hides the
# warnings that --strict counts).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The browser client (clients/web) and the offline app, built from the committed package-lock.json:
# node_modules/ and dist/ are git-ignored. Needs node >= 18 and npm (apt-get install nodejs npm).
web:
	@if ! command -v npm >/dev/null 2>&1; then \
	  if [ -n "$$MALM_SKIP_BROWSER_TESTS" ]; then echo "web client not built: no npm (MALM_SKIP_BROWSER_TESTS is set)"; exit 0; fi; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing node and npm for the web client (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "make test: the web client needs node and npm (sudo apt-get install nodejs npm)"; exit 1; fi; fi; \
	cd clients/web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

test: $(STAMP) browser web
	$(BIN)/ruff check malm tests benchmarks examples
	$(BIN)/mypy malm/sdk malm/edge_index
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900

bench: $(STAMP)
	$(BIN)/malm bench --out benchmarks/results

# linux/aarch64 (a Jetson's CPU) under qemu user-mode emulation: installs the base runtime in an arm64 Debian
# root and answers `malm query`. Needs root, qemu-user-static and debootstrap; slow, so not in `make test`.
check-aarch64: $(STAMP)
	scripts/check_aarch64.sh $(BIN)/python

clean:
	rm -rf $(VENV) runs
