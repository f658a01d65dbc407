"""Composed config -> the DeepSpeed dict and the TrainingArguments, from one source of truth.

Every value the Trainer and DeepSpeed share (batch sizes, accumulation, lr, betas, eps, weight
decay, clipping, precision, warmup, total steps) is written once, here, into both, and every
HF "auto" is resolved, so the JSON that is logged is the JSON that trains and HF's mismatch
check has nothing to find.
"""

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from pipeline.config import Config, OffloadDevice, Provider


def deepspeed_config(cfg: Config, hidden: int, use_cpu: bool = False) -> dict[str, Any]:
    t, p, opt = cfg.trainer, cfg.precision, cfg.optimizer
    ds: dict[str, Any] = {
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "fp16": {
            "enabled": p.fp16,
            "loss_scale": p.loss_scale,
            "loss_scale_window": p.loss_scale_window,
            "initial_scale_power": p.initial_scale_power,
            "hysteresis": p.hysteresis,
            "min_loss_scale": p.min_loss_scale,
        },
        "bf16": {"enabled": p.bf16},
        "zero_optimization": zero_section(cfg, hidden),
        "steps_per_print": 2000,
        "wall_clock_breakdown": False,
    }
    if opt.provider == Provider.deepspeed:
        ds["optimizer"] = {
            "type": opt.name,
            "params": {
                "lr": opt.lr,
                "betas": [opt.beta1, opt.beta2],
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
            },
        }
        if use_cpu and opt.name in ("Adam", "AdamW", "Muon") and not cfg.offloads_optimizer:
            # Without a GPU, DeepSpeed's FusedAdam (Muon's too, for its Adam half) is a CPU op that it
            # compiles on first use (~1.5 min of one core): torch's AdamW takes the same step with
            # nothing to build. Offloaded, DeepSpeedCPUAdam steps (torch's would take its place).
            ds["optimizer"]["params"]["torch_adam"] = True
    else:
        ds["zero_allow_untested_optimizer"] = True
        if cfg.offloads_optimizer:
            # The guide: a torch optimizer with both CPU and GPU code may run offloaded (rules checked it).
            ds["zero_force_ds_cpu_optimizer"] = False
    if cfg.scheduler.provider == Provider.deepspeed:
        ds["scheduler"] = scheduler_section(cfg)
    if cfg.trainer.deepcompile:
        ds["compile"] = {"deepcompile": True}
    if cfg.zero.communication_data_type is not None:
        ds["communication_data_type"] = cfg.zero.communication_data_type.value
    if cfg.offload.device == OffloadDevice.nvme:
        # Top level: DeepSpeed rejects "aio" inside zero_optimization, where the guide's example has it.
        ds["aio"] = dataclasses.asdict(cfg.offload.aio)
    return _merged(ds, cfg.deepspeed)


def _merged(planned: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The planned dict with deepspeed.<key> values laid over it, section by section (rules refused
    the keys a group covers; what is left overrides only the plan's fixed choices, e.g.
    wall_clock_breakdown)."""
    merged = dict(planned)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else value
    return merged


def zero_section(cfg: Config, hidden: int) -> dict[str, Any]:
    z, stage = cfg.zero, cfg.zero.stage
    section: dict[str, Any] = {"stage": stage}
    if stage == 0:
        return section
    section.update(
        overlap_comm=z.overlap_comm,
        contiguous_gradients=z.contiguous_gradients,
        reduce_bucket_size=_auto(z.reduce_bucket_size, hidden * hidden),
        reduce_scatter=z.reduce_scatter,  # ZeRO-3's too: its Muon needs it off
    )
    if stage in (1, 2):
        section.update(
            allgather_partitions=z.allgather_partitions,
            allgather_bucket_size=z.allgather_bucket_size,
            round_robin_gradients=cfg.round_robin,
        )
    else:
        section.update(
            sub_group_size=z.sub_group_size,
            stage3_prefetch_bucket_size=_auto(z.stage3_prefetch_bucket_size, int(0.9 * hidden * hidden)),
            stage3_param_persistence_threshold=_auto(z.stage3_param_persistence_threshold, 10 * hidden),
            stage3_max_live_parameters=z.stage3_max_live_parameters,
            stage3_max_reuse_distance=z.stage3_max_reuse_distance,
            stage3_gather_16bit_weights_on_model_save=z.stage3_gather_16bit_weights_on_model_save,
            zero_quantized_weights=z.zero_quantized_weights,
            zero_quantized_gradients=z.zero_quantized_gradients,
            zero_hpz_partition_size=z.zero_hpz_partition_size,
        )
    off = cfg.offload
    nvme = off.device == OffloadDevice.nvme
    nvme_path = {"nvme_path": str(Path(off.nvme_path).absolute())} if nvme else {}
    if cfg.offloads_optimizer:
        section["offload_optimizer"] = {"device": off.device.value, **nvme_path, "pin_memory": off.pin_memory}
        if nvme:
            section["offload_optimizer"].update(
                buffer_count=off.optimizer_buffer_count, fast_init=off.fast_init
            )
    if cfg.offloads_params:
        section["offload_param"] = {"device": off.device.value, **nvme_path, "pin_memory": off.pin_memory}
        if nvme:
            section["offload_param"].update(
                buffer_count=off.param_buffer_count,
                buffer_size=off.param_buffer_size,
                max_in_cpu=off.max_in_cpu,
            )
    return section


def scheduler_section(cfg: Config) -> dict[str, Any]:
    """DeepSpeed's scheduler block: the keys its class for scheduler.name takes, no other (the engine
    passes them as keyword arguments: one it does not take is a TypeError in the ranks)."""
    from deepspeed.runtime import lr_schedules  # the plan stage: the checks before it stay light

    s = cfg.scheduler
    takes = inspect.signature(getattr(lr_schedules, s.name)).parameters
    values = s.deepspeed_values(cfg.optimizer.lr, cfg.trainer.max_steps)
    # None: DeepSpeed's own default (OneCycle's second half and stairs as its first).
    return {"type": s.name, "params": {k: v for k, v in values.items() if k in takes and v is not None}}


def training_args(cfg: Config, ds: dict[str, Any], output_dir: Path, use_cpu: bool) -> dict[str, Any]:
    """Keyword arguments of transformers.TrainingArguments, drawn from the same values as ds."""
    t, opt, sch = cfg.trainer, cfg.optimizer, cfg.scheduler
    args: dict[str, Any] = dict(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        max_steps=t.max_steps,
        learning_rate=opt.lr,
        adam_beta1=opt.beta1,
        adam_beta2=opt.beta2,
        adam_epsilon=opt.eps,
        weight_decay=opt.weight_decay,
        warmup_steps=sch.warmup_steps,
        fp16=cfg.precision.fp16,
        bf16=cfg.precision.bf16,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        torch_compile=cfg.compiled,
        dataloader_num_workers=t.dataloader_num_workers,
        report_to=[],
        # HF would log a nan/inf loss as the average of the finite ones: a diverged run looked fine.
        logging_nan_inf_filter=False,
        use_cpu=use_cpu,
        deepspeed=ds,
    )
    if cfg.precision.tf32 is not None:  # None: torch's default, untouched
        args["tf32"] = cfg.precision.tf32
    if t.liger_kernel:
        args["use_liger_kernel"] = True
    if t.gradient_checkpointing:  # named only when on: transformers 5.2x renames it, 5.17 has the old name
        args["gradient_checkpointing"] = True
    if cfg.data.has_eval:  # and at the end, always (train.py)
        args["per_device_eval_batch_size"] = t.micro_batch_size
        if t.eval_steps:
            args.update(eval_strategy="steps", eval_steps=t.eval_steps)
    if opt.provider == Provider.hf:
        args["optim"] = opt.name
    if sch.provider == Provider.hf:
        args["lr_scheduler_type"] = sch.name
    return args


def _auto(value: Any, derived: int) -> int:
    return derived if value is None else value
