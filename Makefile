# Two commands do all the set-up on a fresh machine:
#   make run    installs ZeroSweep and trains the default experiment (CPU works; a GPU is used when present)
#   make test   installs what the tests need (Debian packages too, as root) and runs them
#   make ui     the MLflow UI for outputs/ (prints the latest sweep's runs and comparison links)
PY ?= python3

.PHONY: install run test system-deps ui

install:
	# torch first and pinned: a bare torch requirement would pull a CUDA build of several GB.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'

run: install
	$(PY) -m pipeline

ui:
	$(PY) -m pipeline.ui

system-deps:
	bash scripts/system-deps.sh

test: install system-deps
	$(PY) -m pytest
