# tddfa-edge developer entry points. `make bundle` sets everything up on a fresh machine and exports the
# default target; `make test` runs the test suite (CI runs the same command).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TARGET ?= x86-1core

.PHONY: setup aarch64-env bundle bench test test-fast clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup 1/3: pip"
	@$(PY) -m pip install -q --upgrade pip
	@# torch first and pinned: a range would pull a multi-GB CUDA build.
	@echo "setup 2/3: torch 2.13.0, CPU build (about a minute)"
	@$(PY) -m pip install -q torch==2.13.0
	@echo "setup 3/3: tddfa-edge with its export, tflite and dev extras (about a minute)"
	@$(PY) -m pip install -q -e '.[export,tflite,dev]'
	@touch $@

setup: $(VENV)/.installed

# Debian arm64 rootfs + aarch64 wheels for the emulated Raspberry Pi tests (cached; needs apt-get and PyPI once).
aarch64-env: setup
	bash .ci/aarch64_env.sh

bundle: setup
	$(VENV)/bin/tddfa-export --target $(TARGET) --out bundles/$(TARGET) --force

test: setup aarch64-env
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf bundles build *.egg-info .pytest_cache

bench: bundle
	$(VENV)/bin/tddfa-bench --bundle bundles/$(TARGET) --json bundles/$(TARGET)-bench.json --markdown bundles/$(TARGET)-bench.md
