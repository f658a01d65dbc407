# Two commands do all the set-up on a fresh machine:
#   make run    installs ZeroSweep and trains the default experiment (CPU works; a GPU is used when present)
#   make test   installs what the tests need (Debian packages too, as root), checks style and runs the tests
#   make ui     the MLflow UI for outputs/ (prints the latest sweep's runs and comparison links)
# Everything installs into the project's own virtual environment, .venv/ (Debian's Python refuses
# pip installs into itself: PEP 668, externally-managed-environment).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint format system-deps ops ui

$(PY):
	bash scripts/make-venv.sh $(PYTHON) $(VENV)

install: $(PY)
	# torch first and pinned: a bare torch requirement would pull a CUDA build of several GB.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	# Our own modules' bytecode, which an editable install leaves unwritten: where PYTHONDONTWRITEBYTECODE
	# is set, every process (each rank, each Slurm task) would compile them again, ~0.4 s of CPU a start.
	$(PY) -m compileall -q pipeline hydra_plugins

# Liger and the Triton it imports, beside the environment and off its path: the test of Liger's refusal
# of a model type it has no kernels for puts it there (on every other import Triton would cost 0.5 s).
LIGER_KIT := $(VENV)/liger-kit
$(LIGER_KIT): | $(PY)
	$(PY) -m pip install -q --no-deps --target $(LIGER_KIT) liger-kernel==0.8.5 triton==3.9.0

run: install
	$(PY) -m pipeline

ui: install
	$(PY) -m pipeline.ui

system-deps:
	bash scripts/system-deps.sh

# DeepSpeed's CPU ops that need no Debian package, compiled in the background (a few minutes); a
# later load of one waits for its build on torch's build lock.
ops: install
	mkdir -p outputs
	$(PY) scripts/build-ops.py --no-debian >outputs/deepspeed-ops-prebuild.log 2>&1 &

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# make test's set-up on 2 cores: apt (system-deps) and pip (install) each keep one core busy, so
# they run side by side, apt once make-venv's own apt-get is done (they would contend for apt's lock);
# their lines interleave (make's --output-sync would hold pytest's back until it ends).
# The ops then compile while apt, ruff and pytest's start go on; pytest's build loads them. make's
# jobserver stays out of the recipes' environment: a ninja that joins it would find no jobserver there.
ifeq ($(MAKECMDGOALS),test)
MAKEFLAGS += -j2
unexport MAKEFLAGS MFLAGS
system-deps: | $(PY)
endif

test: install system-deps ops lint $(LIGER_KIT)
	# Two workers, a test file each at a time (a file's fixtures are built once); the Slurm file first.
	$(PY) -m pytest -n 2 --dist loadfile --durations=15
