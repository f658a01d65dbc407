#!/bin/bash
# The wheels the GPU device machine lacks for this project, into ./.whl (carried to each call):
# the shared kit (DeepSpeed, Hydra, MLflow, libaio, ...) plus what the pipeline and the benchmarks
# import beyond it. Without hydra-submitit-launcher, Hydra prints "Error importing
# 'hydra_plugins.zerosweep_launchers'" to stderr in every process, which DeepSpeed's autotuner
# reads as the experiment failing (benchmarks/RESULTS.md, ninth session).
# usage (project root, .venv installed): bash benchmarks/device_kit.sh
set -euo pipefail
PATH=$PWD/.venv/bin:$PATH bash ../shared/device/make-wheels.sh datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  nvidia-ml-py==13.615.71 tabulate==0.10.0 optuna==5.0.0 colorlog==6.12.0 hydra-submitit-launcher==1.2.0 \
  cloudpickle==3.1.3 peft==0.21.2
# hydra-submitit-launcher's own requirement resolves to Hydra's release candidates: keep the pinned ones.
find .whl -name 'hydra_core-*' ! -name 'hydra_core-1.3.8-*' -delete
find .whl -name 'omegaconf-*' ! -name 'omegaconf-2.3.0-*' -delete
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
