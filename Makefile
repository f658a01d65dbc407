# Two commands do all the set-up on a fresh machine:
#   make run    installs ZeroSweep and trains the default experiment (CPU works; a GPU is used when present)
#   make test   installs what the tests need (Debian packages too, as root), checks style and runs the tests
#   make ui     the MLflow UI for outputs/ (prints the latest sweep's runs and comparison links)
# Everything installs into the project's own virtual environment, .venv/ (Debian's Python refuses
# pip installs into itself: PEP 668, externally-managed-environment).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint format system-deps ui

$(PY):
	bash scripts/make-venv.sh $(PYTHON) $(VENV)

install: $(PY)
	# torch first and pinned: a bare torch requirement would pull a CUDA build of several GB.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'

run: install
	$(PY) -m pipeline

ui: install
	$(PY) -m pipeline.ui

system-deps:
	bash scripts/system-deps.sh

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: install system-deps lint
	# Two workers, a test file each at a time (a file's fixtures are built once); the Slurm file first.
	$(PY) -m pytest -n 2 --dist loadfile --durations=15
