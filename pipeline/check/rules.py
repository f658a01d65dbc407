"""The guide's rules for combining ZeRO, offload, precision and optimizers, one message each.

Pure checks on a composed config: no environment, no imports of heavy libraries, so a whole
sweep is checked in well under a second before any point starts.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from pipeline.config import (
    AioConf,
    Architecture,
    Config,
    DataConf,
    DataSource,
    LauncherConf,
    ModelConf,
    ModelSource,
    OffloadConf,
    OffloadDevice,
    PeftConf,
    PrecisionConf,
    Provider,
    SchedulerConf,
    SweepConf,
    Tokenizer,
    TrackingConf,
    TrainerConf,
    ZeroConf,
)
from pipeline.errors import ConfigError

# DeepSpeed 0.19's built-in optimizer and scheduler types (deepspeed.runtime.config, lr_schedules).
DS_OPTIMIZERS = {"Adam", "AdamW", "Lamb", "Adagrad", "Lion", "Muon"}
# The guide's 1-bit optimizers: DeepSpeed 0.19 no longer ships them (its engine would look them up
# in torch.optim and fail only once the ranks have started).
# perf=resident's threshold: every parameter stays whole on each GPU.
RESIDENT = 10**12
ONE_BIT = {"onebitadam", "onebitlamb", "zerooneadam"}
DS_SCHEDULERS = {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"}
# Each DeepSpeed scheduler's real-valued keys, and what each must be (DeepSpeed trains on any float).
ABOVE_0 = ("a finite number above 0", lambda v: math.isfinite(v) and v > 0)
AT_LEAST_0 = ("a finite number, 0 or more", lambda v: math.isfinite(v) and v >= 0)
RATIO = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
MOMENTUM = ("a number in [0, 1)", lambda v: 0 <= v < 1)
SCHEDULER_KEYS: dict[str, dict[str, tuple[str, Callable[[float], bool]]]] = {
    "WarmupLR": {"warmup_min_lr": AT_LEAST_0},
    "WarmupDecayLR": {"warmup_min_lr": AT_LEAST_0},
    "WarmupCosineLR": {"warmup_min_ratio": RATIO, "cos_min_ratio": RATIO},
    "OneCycle": {
        "cycle_min_lr": AT_LEAST_0,
        "cycle_max_lr": ABOVE_0,
        "decay_lr_rate": AT_LEAST_0,
        "cycle_min_mom": MOMENTUM,
        "cycle_max_mom": MOMENTUM,
        "decay_mom_rate": AT_LEAST_0,
    },
    "LRRangeTest": {"lr_range_test_min_lr": ABOVE_0, "lr_range_test_step_rate": AT_LEAST_0},
}
# OneCycle's cycle_momentum gives every group betas (beta1, 0.99) (deepspeed.runtime.lr_schedules).
ONE_CYCLE_BETA2 = 0.99
# ZeRO++'s keys and their off values.
ZERO_PLUS_PLUS = {
    "zero_quantized_weights": False,
    "zero_quantized_gradients": False,
    "zero_hpz_partition_size": 1,
}


# DeepSpeed's keys that a group plans, and the key to set instead of deepspeed.<key>.
COVERED = {
    "aio": "offload.aio.*",
    "bfloat16": "precision (precision=bf16)",
    "optimizer": "optimizer.*",
    "zero_allow_untested_optimizer": "optimizer (optimizer.provider)",
    "zero_force_ds_cpu_optimizer": "optimizer (optimizer.provider)",
    "scheduler": "scheduler.*",
    "train_batch_size": "trainer.micro_batch_size, trainer.gradient_accumulation_steps and the ranks",
    "train_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "gradient_accumulation_steps": "trainer.gradient_accumulation_steps",
    "gradient_clipping": "trainer.max_grad_norm",
    "communication_data_type": "zero.communication_data_type",
    "compile": "trainer.deepcompile",
}


# Sections a group plans only some keys of: those keys, and the key to set instead. Their other keys
# pass through (ZeRO++'s zero_quantized_weights, fp16's auto_cast, bf16's immediate_grad_update, ...).
PARTLY_COVERED = {
    "zero_optimization": {
        **{
            f.name: f"zero.{f.name}"
            for f in dataclasses.fields(ZeroConf)
            if f.name != "communication_data_type"
        },
        "offload_optimizer": "offload=cpu|nvme and offload.*",
        "offload_param": "offload=cpu|nvme and offload.params",
    },
    "fp16": {
        "enabled": "precision=fp16",
        **{f.name: f"precision.{f.name}" for f in dataclasses.fields(PrecisionConf) if f.name != "dtype"},
    },
    "bf16": {"enabled": "precision=bf16"},
}


def check(cfg: Config) -> None:
    """Raise ConfigError for the first rule the config breaks."""
    _check_ranges(cfg)
    _check_deepspeed_keys(cfg)
    _check_offload(cfg)
    _check_optimizer(cfg)
    _check_scheduler(cfg)
    _check_resident(cfg)
    _check_zero_plus_plus(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_saving(cfg)
    _check_peft(cfg)
    _check_fp8(cfg)
    _check_liger(cfg)


def _check_deepspeed_keys(cfg: Config) -> None:
    """deepspeed.<key> is for what no group covers: a covered key would fight the group's value
    (the plan writes each shared value once, into DeepSpeed and the Trainer alike)."""
    for key, value in cfg.deepspeed.items():
        if key in COVERED:
            raise ConfigError(f"deepspeed.{key}", "a config group sets it", f"use {COVERED[key]}")
        planned = PARTLY_COVERED.get(key, {})
        for sub in value if isinstance(value, dict) else {}:
            if sub in planned:
                raise ConfigError(f"deepspeed.{key}.{sub}", "a config group sets it", f"use {planned[sub]}")


def _check_ranges(cfg: Config) -> None:
    """Every count and size in range, before DeepSpeed or the Trainer meet it (a zero seq_len or a
    negative bucket would fail only in the ranks, as a traceback)."""
    if cfg.zero.stage not in (0, 1, 2, 3):
        raise ConfigError(
            "zero.stage", f"ZeRO has stages 0-3, not {cfg.zero.stage}", "use zero=stage0..stage3"
        )
    for key, least in MINIMUMS:
        value = _value(cfg, key)
        if value is not None and value < least:
            raise ConfigError(key, f"must be at least {least}, got {value}", f"set {key}={least} or more")
    o = cfg.optimizer
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(
            "optimizer.lr", f"must be a finite number above 0, got {o.lr}", "set e.g. optimizer.lr=3e-4"
        )
    for key in ("optimizer.beta1", "optimizer.beta2"):
        if not 0 <= _value(cfg, key) < 1:
            raise ConfigError(key, f"must be in [0, 1), got {_value(cfg, key)}", f"set e.g. {key}=0.9")
    for key in ("optimizer.eps", "optimizer.weight_decay", "trainer.max_grad_norm"):
        value = _value(cfg, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(key, f"must be a finite number, 0 or more, got {value}", f"set {key}=0 or more")
    m = cfg.model
    if m.source == ModelSource.built and m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            "model.hidden_size",
            f"{m.hidden_size} is not a multiple of model.num_attention_heads ({m.num_attention_heads})",
            "make model.hidden_size a multiple of model.num_attention_heads",
        )


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


# The groups whose counts and sizes have a least value (their AT_LEAST, in config.py), in the order they
# are checked: all of at least 1 first. The first one out of range is the one reported.
RANGED = (
    ("scheduler", SchedulerConf),
    ("trainer", TrainerConf),
    ("data", DataConf),
    ("model", ModelConf),
    ("sweep", SweepConf),
    ("tracking", TrackingConf),
    ("zero", ZeroConf),
    ("offload", OffloadConf),
    ("offload.aio", AioConf),
    ("launcher", LauncherConf),
    ("precision", PrecisionConf),
    ("peft", PeftConf),
)
MINIMUMS = [
    (f"{group}.{key}", least)
    for least in (1, 0)
    for group, kind in RANGED
    for key, minimum in kind.AT_LEAST.items()
    if minimum == least
]


def _check_offload(cfg: Config) -> None:
    off, stage = cfg.offload, cfg.zero.stage
    if off.device == OffloadDevice.none:
        if off.params:
            raise ConfigError(
                "offload.params",
                "parameter offload needs an offload device",
                "use offload=cpu or offload=nvme with zero=stage3",
            )
        return
    if stage == 0:
        raise ConfigError(
            "offload.device",
            f"offload to {off.device.value} needs ZeRO (stage 1-3)",
            "use zero=stage2 (optimizer offload) or zero=stage3",
        )
    if off.device == OffloadDevice.nvme and stage != 3:
        raise ConfigError(
            "offload.device",
            "NVMe offload (ZeRO-Infinity) needs ZeRO-3",
            "use zero=stage3, or offload=cpu with this stage",
        )
    if off.params and stage != 3:
        raise ConfigError(
            "offload.params", "parameter offload needs ZeRO-3", "use zero=stage3, or offload.params=false"
        )
    if off.device == OffloadDevice.nvme and not off.nvme_path:
        raise ConfigError(
            "offload.nvme_path", "NVMe offload needs a path", "set offload.nvme_path=/local_nvme"
        )
    if not (off.optimizer or cfg.offloads_params):
        raise ConfigError(
            "offload", "offload is on but nothing is offloaded", "use offload=none, or offload.optimizer=true"
        )


def _check_optimizer(cfg: Config) -> None:
    opt = cfg.optimizer
    if opt.provider == Provider.deepspeed and opt.name.lower() in ONE_BIT:
        raise ConfigError(
            "optimizer.name",
            f"DeepSpeed 0.19 has no {opt.name} (its 1-bit optimizers were removed)",
            "use optimizer=adamw; for less gradient traffic, zero.communication_data_type=bf16",
        )
    if opt.provider == Provider.deepspeed and opt.name not in DS_OPTIMIZERS:
        raise ConfigError(
            "optimizer.name",
            f"DeepSpeed has no optimizer '{opt.name}'",
            f"use one of {', '.join(sorted(DS_OPTIMIZERS))}, or optimizer.provider=hf",
        )
    if (
        opt.provider == Provider.deepspeed
        and opt.name == "Muon"
        and cfg.zero.stage == 3
        and cfg.zero.reduce_scatter
    ):
        raise ConfigError(
            "zero.reduce_scatter",
            "DeepSpeed's Muon on ZeRO-3 cannot reduce-scatter gradients (it orthogonalizes whole matrices)",
            "set zero.reduce_scatter=false",
        )
    if not cfg.offloads_optimizer:
        return
    if opt.name.lower() == "lamb":
        raise ConfigError(
            "optimizer", "LAMB cannot be used with optimizer offload", "use optimizer=adamw, or offload=none"
        )
    if opt.provider == Provider.hf and not opt.cpu_impl:
        raise ConfigError(
            "optimizer",
            f"'{opt.name}' has no CPU implementation, which optimizer offload needs",
            "use optimizer=adamw (DeepSpeedCPUAdam), or offload=none",
        )


def _check_scheduler(cfg: Config) -> None:
    """The chosen DeepSpeed scheduler's own keys (the others are not planned): a learning rate DeepSpeed
    would take and train on without a word (negative, nan, a cycle's bottom above its top)."""
    sch = cfg.scheduler
    if sch.provider != Provider.deepspeed:
        return
    if sch.name not in DS_SCHEDULERS:
        raise ConfigError(
            "scheduler.name",
            f"DeepSpeed has no scheduler '{sch.name}'",
            f"use one of {', '.join(sorted(DS_SCHEDULERS))}, or scheduler.provider=hf",
        )
    values = sch.deepspeed_values(cfg.optimizer.lr, cfg.trainer.max_steps)
    for key, (must, holds) in SCHEDULER_KEYS[sch.name].items():
        if not holds(values[key]):
            raise ConfigError(
                f"scheduler.{key}",
                f"{sch.name} needs {must}, got {values[key]}",
                f"give scheduler.{key} {must}",
            )
    if sch.name != "OneCycle":
        return
    bottom, top = values["cycle_min_lr"], values["cycle_max_lr"]
    if bottom > top:
        raise ConfigError(
            "scheduler.cycle_min_lr",
            f"the cycle's bottom {bottom} is above its top, scheduler.cycle_max_lr {top}",
            "set scheduler.cycle_min_lr below scheduler.cycle_max_lr",
        )
    beta2 = cfg.optimizer.beta2
    if sch.cycle_momentum and beta2 != ONE_CYCLE_BETA2:
        raise ConfigError(
            "scheduler.cycle_momentum",
            f"OneCycle's momentum cycle sets beta2 to {ONE_CYCLE_BETA2}, not optimizer.beta2={beta2}",
            f"set optimizer.beta2={ONE_CYCLE_BETA2}, or scheduler.cycle_momentum=false",
        )


def _check_resident(cfg: Config) -> None:
    """A persistence threshold is ZeRO-3's (perf=resident sets one above the largest tensor)."""
    if cfg.zero.stage3_param_persistence_threshold is None:
        return
    key = "zero.stage3_param_persistence_threshold"
    if cfg.zero.stage != 3:
        raise ConfigError(
            key,
            f"keeps ZeRO-3 parameters whole, but zero.stage is {cfg.zero.stage}",
            "use it with zero=stage3, or perf=none",
        )
    if cfg.offloads_params and cfg.zero.stage3_param_persistence_threshold >= RESIDENT:
        raise ConfigError(
            key,
            "parameters cannot stay on the GPU and be offloaded",
            "use offload=none, or offload.params=false",
        )


def _check_zero_plus_plus(cfg: Config) -> None:
    """ZeRO++ is ZeRO-3's: DeepSpeed 0.19.8 hands qwZ, qgZ and hpZ only to DeepSpeedZeroOptimizer_Stage3
    (engine._configure_zero_optimizer; qgZ is stage3's all_to_all_quant_reduce), so on ZeRO-1/2 they
    would be ignored without a word."""
    z = cfg.zero
    on = [k for k in ZERO_PLUS_PLUS if getattr(z, k) != ZERO_PLUS_PLUS[k]]
    if on and z.stage != 3:
        raise ConfigError(
            f"zero.{on[0]}", f"ZeRO++ needs ZeRO-3, but zero.stage is {z.stage}", "use zero=stage3"
        )
    # hpZ's groups are consecutive ranks (groups._create_zero_param_parallel_group, which asserts only
    # that the size divides the world): dividing the ranks per node keeps each group inside one node.
    size, per_node = z.zero_hpz_partition_size, cfg.trainer.nproc_per_node
    if per_node % size:
        raise ConfigError(
            "zero.zero_hpz_partition_size",
            f"{size} does not divide the ranks per node (trainer.nproc_per_node={per_node})",
            f"use a divisor of {per_node}, e.g. zero.zero_hpz_partition_size={per_node}",
        )


def _check_model(cfg: Config) -> None:
    m = cfg.model
    if m.source != ModelSource.pretrained:
        return
    if not m.name_or_path:
        raise ConfigError(
            "model.name_or_path",
            "model=hf needs the pretrained model",
            "set model.name_or_path=/path/to/model",
        )
    if cfg.data.source == DataSource.text and cfg.data.tokenizer == Tokenizer.auto:
        raise ConfigError(
            "data",
            "the shipped corpus is byte tokens, not the pretrained model's tokenizer",
            f"use data=files data.train_files={cfg.data.path} (the model's tokens), or data.tokenizer=byte",
        )
    sizes = {
        f.name: f.default for f in dataclasses.fields(ModelConf) if f.name not in ("source", "name_or_path")
    }
    for key, default in sizes.items():
        if getattr(m, key) != default:
            raise ConfigError(
                f"model.{key}", "the pretrained model's own config decides it", f"remove model.{key}=..."
            )


def _check_data(cfg: Config) -> None:
    d = cfg.data
    if d.source != DataSource.files:
        return
    if d.train_files is None:
        raise ConfigError(
            "data.train_files", "data=files needs the training data", "set data.train_files=/data/train.jsonl"
        )
    if not 0 <= d.eval_fraction < 1:
        raise ConfigError(
            "data.eval_fraction", f"{d.eval_fraction} is not in [0, 1)", "set e.g. data.eval_fraction=0.05"
        )
    if d.eval_files is not None and d.eval_fraction > 0:
        raise ConfigError(
            "data.eval_fraction",
            "there are eval files already",
            "give data.eval_files or data.eval_fraction, not both",
        )


def _check_saving(cfg: Config) -> None:
    t, z = cfg.trainer, cfg.zero
    if t.export_fp32 and z.stage == 0:
        raise ConfigError(
            "trainer.export_fp32",
            "zero_to_fp32 reads ZeRO checkpoints (stages 1-3)",
            "use zero=stage1..stage3, or trainer.export_fp32=false (ZeRO-0 saves the whole weights)",
        )
    if t.save_model and z.stage == 3 and not z.stage3_gather_16bit_weights_on_model_save:
        raise ConfigError(
            "zero.stage3_gather_16bit_weights_on_model_save",
            "ZeRO-3 cannot save the trained model whole without it",
            "set it true, or trainer.save_model=false (with trainer.export_fp32=true for fp32 weights)",
        )


# bitsandbytes' 4-bit data types (BitsAndBytesConfig.bnb_4bit_quant_type).
QUANT_TYPES = ("nf4", "fp4")


def _check_peft(cfg: Config) -> None:
    """The adapter's own values (peft would train on a negative alpha or a dropout of 1 without a word),
    and what DeepSpeed cannot do with a 4-bit base."""
    p = cfg.peft
    if cfg.trainer.merge_adapter and not p.enabled:
        raise ConfigError(
            "trainer.merge_adapter", "there is no adapter to merge (peft=none)", "use peft=lora or peft=qlora"
        )
    if not p.enabled:
        return
    if not (math.isfinite(p.alpha) and p.alpha > 0):
        raise ConfigError(
            "peft.alpha", f"must be a finite number above 0, got {p.alpha}", "set e.g. peft.alpha=32"
        )
    if not 0 <= p.dropout < 1:
        raise ConfigError("peft.dropout", f"must be in [0, 1), got {p.dropout}", "set e.g. peft.dropout=0.05")
    if p.target_modules is not None and not p.target_modules:
        raise ConfigError(
            "peft.target_modules",
            "an empty list adapts nothing",
            "name its layers, or leave it unset for all",
        )
    if not p.quantized:
        return
    if p.quant_type not in QUANT_TYPES:
        raise ConfigError(
            "peft.quant_type", f"bitsandbytes has no 4-bit type '{p.quant_type}'", "use nf4 or fp4"
        )
    if cfg.offload.device == OffloadDevice.nvme:
        # ZeRO-Infinity swaps parameters through its own flat buffers; the 4-bit weights' quantization
        # state (bitsandbytes' Params4bit.quant_state) does not go with them.
        raise ConfigError(
            "offload.device",
            "QLoRA's 4-bit base cannot be swapped to NVMe by DeepSpeed",
            "use offload=cpu or offload=none with peft=qlora, or peft=lora",
        )


# torchao's float8 training recipes (Float8LinearConfig.from_recipe_name).
FP8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def _check_fp8(cfg: Config) -> None:
    """float8 replaces the trained model's linear layers (torchao), with bf16 around them."""
    p = cfg.precision
    if not p.fp8:
        return
    if not p.bf16:
        raise ConfigError(
            "precision.dtype",
            f"fp8 trains with bf16 outside the linear layers, not {p.dtype.value}",
            "use precision=fp8 (it sets bf16)",
        )
    if p.fp8_recipe not in FP8_RECIPES:
        raise ConfigError(
            "precision.fp8_recipe",
            f"torchao has no float8 recipe '{p.fp8_recipe}'",
            f"use one of {', '.join(FP8_RECIPES)}",
        )
    if cfg.peft.enabled:
        # peft wraps each linear layer of the frozen base; torchao swaps nn.Linear modules for its own.
        raise ConfigError(
            "precision",
            "fp8 trains the full model's linear layers, and an adapter's base is frozen",
            "use precision=bf16 with peft, or peft=none with precision=fp8",
        )


def _check_liger(cfg: Config) -> None:
    """Liger patches a Llama-family model's modules; its cross-entropy takes the head's weight itself."""
    if not cfg.trainer.liger_kernel:
        return
    if cfg.zero.stage == 3:
        # ZeRO-3 gathers a weight in its module's forward hook; the fused loss reads lm_head.weight
        # without calling lm_head, so it would get the rank's empty partition (huggingface/trl #5891).
        raise ConfigError(
            "trainer.liger_kernel",
            "Liger's fused cross-entropy reads the head's weight outside its forward, where ZeRO-3 "
            "has not gathered it",
            "use zero=stage2 (or stage0/1) with trainer.liger_kernel=true, or trainer.liger_kernel=false",
        )
    if cfg.model.source == ModelSource.built and cfg.model.architecture != Architecture.llama:
        raise ConfigError(
            "trainer.liger_kernel",
            f"Liger has no kernels for a {cfg.model.architecture.value} model",
            "use trainer.liger_kernel=false, or model.architecture=llama",
        )
