"""One training rank: model + data + HF Trainer with the planned DeepSpeed config, then the
trained model saved as a Hugging Face model directory.

Runs in the job process (one rank), in a process started by torch's elastic launcher (N
ranks), or in a Slurm task; takes a pickled Job and returns its Summary.
"""

import dataclasses
import gc
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from pipeline import track
from pipeline.config import ModelSource
from pipeline.job import Job, Summary
from pipeline.rank import cpu_probe, data, model, tokenizer
from pipeline.rank.metrics import Diverged, StepMetrics
from pipeline.rank.watchdog import Watchdog


def worker(job: Job, own_process: bool = True) -> Summary:
    """Train one rank; rank 0 appends metrics to the job's MLflow run. Returns this rank's summary.
    own_process: the rank is a process of its own (not the job's, as one local rank is)."""
    # DeepSpeed calls torch.distributed's deprecated names on every step: keep the progress readable.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    cpu_probe.remember()
    training = Training(job, own_process)
    try:
        training.train()
    finally:
        training.close()
    lost = training.logger.lost_steps if training.logger else 0  # known once close() flushed
    return dataclasses.replace(training.clock.summary(), lost_metric_steps=lost or None)


class Training:
    """One rank's training in three steps: build (model, data, the Trainer and its callbacks), train
    (then evaluate and save), close (what it started, also after an error)."""

    def __init__(self, job: Job, own_process: bool) -> None:
        cfg, t = job.cfg, job.cfg.trainer
        self.job, self.rank = job, int(os.environ.get("RANK", "0"))
        arch = model.model_config(cfg, tokenizer.BYTE_VOCAB)
        net, args = model_and_arguments(job, arch)
        train_set, self.eval_set = data.splits(cfg, arch.vocab_size, t.max_steps * job.global_batch, job.data)
        self.logger = (
            track.MetricLogger(job.run, cfg.tracking.buffer_s) if self.rank == 0 and job.run else None
        )
        self.clock = StepMetrics(
            job.tokens_per_step,
            job.flops_per_token,
            t.timing_warmup_steps,
            self.logger,
            t.stop_on_nan,
            cfg.precision.fp16,
        )
        flush = self.logger.flush if self.logger else None
        self.watchdog = (
            Watchdog(t.hang_timeout_s, job.out, self.rank, not own_process, flush, job.ranks)
            if t.hang_timeout_s
            else None
        )
        if cfg.compiled:
            share_compile_cache(cfg.outputs_dir)
        callbacks = [FreezeHeap(), self.clock, *([self.watchdog] if self.watchdog else [])]
        callbacks += [FlushOnSave(flush)] if flush else []
        self.trainer = Trainer(
            model=net, args=args, train_dataset=train_set, eval_dataset=self.eval_set, callbacks=callbacks
        )

    def train(self) -> None:
        """Train (from the job's checkpoint, if it resumes one); a diverged loss fails the run; the
        last evaluation at the end; the trained model saved."""
        trainer, clock = self.trainer, self.clock
        trainer.train(resume_from_checkpoint=self.job.resume_from)
        if clock.diverged_at is not None and self.job.cfg.trainer.stop_on_nan:
            raise Diverged(f"loss is nan/inf at step {clock.diverged_at}")
        if self.eval_set is not None and clock.evaluated_at != trainer.state.global_step:
            trainer.evaluate()  # at the end, unless eval_steps just did
        save(trainer, self.job, self.rank == 0)
        clock.node_host_peak()

    def close(self) -> None:
        if self.watchdog:
            self.watchdog.close()
        gc.unfreeze()  # the next point of a local sweep must be able to collect this one's cycles
        if self.logger:
            self.logger.flush()


def partitioning_arguments(job: Job) -> TrainingArguments:
    """The Trainer's arguments, made before a model that ZeRO-3 partitions as it is built or loaded.
    zero.Init reads the world size from DeepSpeed's communication backend, which the arguments' set-up
    starts on a GPU only: on CPU it would count one rank and refuse the batch size (train_batch_size !=
    micro x accumulation x 1). Started here, it wraps the process group the arguments made."""
    args = TrainingArguments(**job.training_args)
    if job.cfg.zero.stage == 3 and dist.is_initialized():
        import deepspeed  # what the Trainer's engine imports anyway

        deepspeed.init_distributed()
    return args


def model_and_arguments(job: Job, arch: PretrainedConfig) -> tuple[PreTrainedModel, TrainingArguments]:
    """The model and the Trainer's arguments, in the order the model's partitioning needs."""
    cfg = job.cfg
    if cfg.peft.enabled:
        from pipeline.rank import adapter  # peft: only where an adapter is asked for

        base = adapter.base_path(cfg, job.out, arch)
        # Arguments first, as for a pretrained model: under ZeRO-3 the base loads partitioned.
        args = partitioning_arguments(job)
        net = adapter.load(cfg, base)
    elif cfg.model.zero3_init or cfg.model.source == ModelSource.pretrained:
        # Arguments first: their live DeepSpeed config makes HF build or load the model already
        # partitioned under ZeRO-3 (zero.Init), so each rank holds its share only.
        args = partitioning_arguments(job)
        net = model.build(cfg, arch)
    else:
        unset_hf_deepspeed_config()  # a previous point of a local sweep may have left one live
        net = model.build(cfg, arch)
        args = TrainingArguments(**job.training_args)
    if cfg.precision.fp8:
        converted = model.to_float8(net, cfg)
        if os.environ.get("RANK", "0") == "0":
            print(f"fp8: {converted} linear layers train in float8 (torchao)", flush=True)
    if cfg.trainer.gradient_checkpointing:
        net.config.use_cache = False
    return net, args


def share_compile_cache(outputs_dir: str) -> None:
    """torch.compile's caches (Inductor's graphs and kernels, Triton's binaries below them) under
    outputs_dir instead of each node's /tmp: a sweep's later points, a search's trials and the Slurm
    jobs on other nodes compile from the first one's. A cache dir the user set is kept."""
    cache = Path(outputs_dir).absolute() / "cache" / "compile"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))


def save(trainer: Trainer, job: Job, is_main: bool) -> None:
    """The trained model and its tokenizer as a Hugging Face model directory (every rank takes part:
    ZeRO-3 gathers the 16-bit weights); with export_fp32, fp32 weights from a ZeRO checkpoint."""
    t = job.cfg.trainer
    if t.save_model and job.cfg.peft.enabled:
        save_adapter(trainer, job, is_main)
    elif t.save_model:
        trainer.save_model(str(job.model_dir))
        if is_main:
            tokenizer.load(job.cfg).save_pretrained(str(job.model_dir))
    if t.export_fp32:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        final = job.out / "checkpoints" / "final"
        trainer.model_wrapped.save_checkpoint(str(final))
        if is_main:
            # save_pretrained, not zero_to_fp32's own writer: it knows the model's tied weights.
            fp32 = get_fp32_state_dict_from_zero_checkpoint(str(final))
            trainer.model.save_pretrained(str(job.fp32_dir), state_dict=fp32)
            tokenizer.load(job.cfg).save_pretrained(str(job.fp32_dir))
    if dist.is_initialized():
        dist.barrier()  # the files are complete before any rank returns


def save_adapter(trainer: Trainer, job: Job, is_main: bool) -> None:
    """The adapter alone (the Trainer gathers its 16-bit weights under ZeRO-3, every rank taking part)
    with the tokenizer, to <run dir>/adapter/; with trainer.merge_adapter, the merged model to model/."""
    from pipeline.rank import adapter

    trainer.save_model(str(job.adapter_dir))
    if not is_main:
        return
    tokenizer.load(job.cfg).save_pretrained(str(job.adapter_dir))
    if job.cfg.trainer.merge_adapter:
        adapter.merge(job.adapter_dir, job.model_dir, adapter.compute_dtype(job.cfg))
        tokenizer.load(job.cfg).save_pretrained(str(job.model_dir))


class FreezeHeap(TrainerCallback):
    """Once the engine is built, what is alive (Hydra, MLflow, the model, ZeRO's partitions) lives
    as long as the run: take it out of the collector's full passes, which otherwise rescan it every
    few steps (~35 ms a step in the 1B ZeRO-3 offload forward on the device, benchmarks/RESULTS.md)."""

    def on_train_begin(self, args, state, control, **kw):
        gc.collect()
        gc.freeze()


class FlushOnSave(TrainerCallback):
    """Metrics buffered so far reach the store with each checkpoint: a job killed later and resumed
    from it has every step up to there in its run."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush

    def on_save(self, args, state, control, **kw):
        self.flush()
