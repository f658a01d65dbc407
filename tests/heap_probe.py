"""Trains one rank in-process, as a local run or sweep point does, and prints how much of the heap
was frozen at each step and after: `python tests/heap_probe.py OUT_DIR` (test_train.py runs it)."""

import gc
import sys
from pathlib import Path

from transformers import Trainer

from pipeline import plan
from pipeline.check import compose
from pipeline.job import Job
from pipeline.launch import local

frozen, step = [], Trainer.training_step


def counting_step(self, *args, **kwargs):
    frozen.append(gc.get_freeze_count())
    return step(self, *args, **kwargs)


Trainer.training_step = counting_step
cfg = compose.compose_point(["trainer.max_steps=3", "tracking.enabled=false"])
out = Path(sys.argv[1])
local.Local(nproc=1).launch(Job.of(cfg, plan.make(cfg, out, use_cpu=True), out, ranks=1))
print("FROZEN", min(frozen), len(frozen), gc.get_freeze_count())
