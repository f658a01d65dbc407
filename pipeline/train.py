"""One training rank: model + data + HF Trainer with the planned DeepSpeed config.

Runs in the job process (one rank), in a process started by torch's elastic launcher (N
ranks), or in a Slurm task; takes a pickled Job and returns a plain summary.
"""

import gc
import os
import warnings

from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from pipeline import data, model, track
from pipeline.job import Job
from pipeline.metrics import StepMetrics


def worker(job: Job) -> dict[str, float]:
    """Train one rank; rank 0 appends metrics to the job's MLflow run. Returns this rank's summary."""
    # DeepSpeed calls torch.distributed's deprecated names on every step: keep the progress readable.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    cfg, t = job.cfg, job.cfg.trainer
    llama = model.llama_config(cfg.model, data.vocab_size(cfg.data), cfg.data.seq_len)
    if cfg.model.zero3_init:
        # Arguments first: their live DeepSpeed config makes HF build the model partitioned (zero.Init).
        args = TrainingArguments(**job.training_args)
        net = model.build(llama, t.seed)
    else:
        unset_hf_deepspeed_config()  # a previous point of a local sweep may have left one live
        net = model.build(llama, t.seed)
        args = TrainingArguments(**job.training_args)
    if t.gradient_checkpointing:
        net.config.use_cache = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    samples = t.max_steps * t.micro_batch_size * t.gradient_accumulation_steps * world
    train_set = data.dataset(cfg.data, llama.vocab_size, min_blocks=samples)
    is_main = int(os.environ.get("RANK", "0")) == 0
    logger = track.MetricLogger(job.run) if is_main and job.run else None
    tokens_per_step = t.micro_batch_size * t.gradient_accumulation_steps * world * cfg.data.seq_len
    clock = StepMetrics(tokens_per_step, job.flops_per_token, t.timing_warmup_steps, logger)
    trainer = Trainer(model=net, args=args, train_dataset=train_set, callbacks=[FreezeHeap(), clock])
    try:
        trainer.train(resume_from_checkpoint=job.resume_from)
    finally:
        gc.unfreeze()  # the next point of a local sweep must be able to collect this one's cycles
        if logger:
            logger.flush()
    return clock.summary()


class FreezeHeap(TrainerCallback):
    """Once the engine is built, what is alive (Hydra, MLflow, the model, ZeRO's partitions) lives
    as long as the run: take it out of the collector's full passes, which otherwise rescan it every
    few steps (~35 ms a step in the 1B ZeRO-3 offload forward on the device, benchmarks/RESULTS.md)."""

    def on_train_begin(self, args, state, control, **kw):
        gc.collect()
        gc.freeze()
