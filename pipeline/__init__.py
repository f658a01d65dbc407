"""ZeroSweep: Hydra-composed DeepSpeed experiments, launched locally or on Slurm, tracked in MLflow."""

import atexit
import gc

# Every process of the pipeline (the command, its ranks, a Slurm job, the metrics sampler) imports
# this package. At exit Python's last collection walks every object torch, transformers, DeepSpeed
# and MLflow made (~840k after a tiny run) to free memory the OS takes back anyway: 2 s of a 2-core
# machine per process. Frozen, they are skipped; atexit's other handlers (registered later) run first.
atexit.register(gc.freeze)
