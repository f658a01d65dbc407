#!/bin/bash
# The wheels the GPU device machine lacks for this project, into ./.whl (carried to each call):
# the shared kit (DeepSpeed, Hydra, MLflow, libaio, ...) plus what the pipeline and the benchmarks
# import beyond it. Without hydra-submitit-launcher, Hydra prints "Error importing
# 'hydra_plugins.zerosweep_launchers'" to stderr in every process, which DeepSpeed's autotuner
# reads as the experiment failing (benchmarks/RESULTS.md, ninth session).
# usage (project root, .venv installed): bash benchmarks/device_kit.sh; then each GPU call is
# benchmarks/device_calls.sh (run with carry [".whl"]).
set -euo pipefail
PATH=$PWD/.venv/bin:$PATH bash ../shared/device/make-wheels.sh datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  nvidia-ml-py==13.615.71 tabulate==0.10.0 optuna==5.0.0 colorlog==6.12.0 hydra-submitit-launcher==1.2.0 \
  cloudpickle==3.1.3 peft==0.21.2
# hydra-submitit-launcher's own requirement resolves to Hydra's release candidates: keep the pinned ones.
find .whl -name 'hydra_core-*' ! -name 'hydra_core-1.3.8-*' -delete
find .whl -name 'omegaconf-*' ! -name 'omegaconf-2.3.0-*' -delete
# fp8 (torchao) and Liger (its Triton comes with the device's torch); QLoRA's bitsandbytes unpacked,
# with only its CUDA 13 library (the device's torch is cu130; the wheel's other builds are ~120 MB).
plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64"
.venv/bin/python -m pip download -q --no-deps $plat -d .whl torchao==0.17.0 liger-kernel==0.8.5
tmp=$(mktemp -d)
.venv/bin/python -m pip download -q --no-deps $plat -d "$tmp" bitsandbytes==0.50.2
rm -rf .whl/bnb && mkdir -p .whl/bnb && .venv/bin/python -m zipfile -e "$tmp"/bitsandbytes-*.whl .whl/bnb
find .whl/bnb/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda130.so' ! -name '*cpu.so' -delete
rm -rf "$tmp"
# The hand-written yardstick (../shared/reference), which the device's copy of the tree lacks.
rm -rf .whl/reference && cp -r ../shared/reference .whl/reference
mkdir -p .git/info && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude; }
