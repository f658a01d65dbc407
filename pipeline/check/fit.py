"""Does a point fit the machine it will run on? Its memory plan against the GPU's memory (the local
GPU, or launcher.gpu_mem_gib: the cluster's nodes, or a stand-in for the local GPU) and, where
offload puts states there, host memory. A point that does not fit never starts: a single run is
refused, a sweep's point is skipped (recorded as such); check_fit=false starts it anyway."""

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline.check import rules
from pipeline.config import GIB, Config, OffloadDevice
from pipeline.errors import ConfigError
from pipeline.plan.memory import MemoryPlan, zero3_kept_params

# ZeRO-2 against ZeRO-3 in tokens/s, the 1B Llama with LoRA r=16 on one H100: 38,517 against 11,874, and
# 3.2x under QLoRA too (benchmarks/RESULTS.md, nineteenth session). ZeRO-3 gathers every weight each
# forward and backward, frozen or not, so LoRA keeps that cost while its optimizer step all but vanishes.
ZERO2_SPEEDUP = 3.2
# The ZeRO-3 live and reuse bound a refusal suggests (a tenth of DeepSpeed's default, 1e9).
LIVE = 100_000_000


@dataclass
class Capacity:
    """Bytes per GPU and per node's host memory where the point will run (None: not known)."""

    gpu: int | None
    host: int | None

    @classmethod
    def of(cls, cfg: Config, runs_here: bool) -> "Capacity":
        gpu = None
        if cfg.launcher.gpu_mem_gib is not None:
            gpu = int(cfg.launcher.gpu_mem_gib * GIB)
        elif runs_here:
            gpu = _local_gpu()
        host = psutil.virtual_memory().total if runs_here else None
        if cfg.launcher.mem_gb is not None and not runs_here:
            host = cfg.launcher.mem_gb * 10**9
        return cls(gpu, host)


def _local_gpu() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def shortfall(cfg: Config, memory: MemoryPlan, capacity: Capacity) -> str | None:
    """What does not fit, in words with the figures; None if it fits (or nothing is known)."""
    gpu = memory.gpu_peak
    if capacity.gpu is not None and gpu > capacity.gpu:
        return f"needs ~{size(gpu)} per GPU, the GPU has {size(capacity.gpu)}"
    if cfg.offload.device != OffloadDevice.none and capacity.host is not None:
        if memory.host_model_states > capacity.host:
            need, have = size(memory.host_model_states), size(capacity.host)
            return f"needs ~{need} of host memory for the offloaded states, the node has {have}"
    return None


def size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def refusal(cfg: Config, memory: MemoryPlan, runs_here: bool) -> ConfigError | None:
    """The one line that refuses a point that does not fit, with the changes that would fit it."""
    if not cfg.check_fit:
        return None
    capacity = Capacity.of(cfg, runs_here)
    problem = shortfall(cfg, memory, capacity)
    if problem is None:
        note = zero2_note(cfg, capacity)
        if note:
            print(note, file=sys.stderr)
        return None
    fixes = [change for change, variant in _variants(cfg) if _fits(variant, capacity)]
    fix = f"use {_either(fixes) if fixes else _fallback(cfg, memory, capacity)}"
    return ConfigError("memory", problem, f"{fix}; check_fit=false starts it anyway")


def zero2_note(cfg: Config, capacity: Capacity) -> str | None:
    """LoRA on ZeRO-3 whose base fits each GPU under ZeRO-2 as well: one line suggesting ZeRO-2, which
    does not gather the frozen weights every step. None otherwise (or where the GPU is not known)."""
    if not cfg.peft.enabled or cfg.zero.stage != 3 or capacity.gpu is None:
        return None
    change, variant = _variant(cfg, "zero=stage2", "zero", stage=2)
    if not _fits(variant, capacity):
        return None
    return (
        f"note: zero: {cfg.peft.method.value} on ZeRO-3, but its base fits each GPU under ZeRO-2 as well: "
        f"{change} skips gathering the frozen weights every step, expect ~{ZERO2_SPEEDUP}x the tokens/s"
    )


def _fallback(cfg: Config, memory: MemoryPlan, capacity: Capacity) -> str:
    """What is left when no override fits: more hardware, or NVMe for the GPU's share. Short of host
    memory, NVMe at the default zero.sub_group_size needs nearly what CPU offload does (its pinned
    swap buffers: memory.nvme_host_bytes), so it is not offered there."""
    if capacity.gpu is not None and memory.gpu_peak > capacity.gpu:
        nvme = ", or offload=nvme" if cfg.offload.device != OffloadDevice.nvme else ""
        return f"a GPU with more memory, more GPUs{nvme}"
    return "a node with more memory or more nodes"


def _variants(cfg: Config) -> list[tuple[str, Config]]:
    """The usual ways to need less memory per GPU (or, on NVMe, on the host), each as the override
    that makes it."""
    z, t = cfg.zero, cfg.trainer
    tried = _knob_variants(cfg)
    if cfg.offload.device == OffloadDevice.none and z.stage > 0:
        tried.append(_variant(cfg, "offload=cpu", "offload", device=OffloadDevice.cpu))
    if z.stage < 3:
        tried.append(_variant(cfg, "zero=stage3", "zero", stage=3))
    if cfg.offload.device == OffloadDevice.nvme and cfg.offloads_optimizer and z.sub_group_size > 10**7:
        # NVMe swaps the optimizer through pinned host buffers a sub-group large (memory.nvme_host_bytes).
        tenth = z.sub_group_size // 10
        tried.append(_variant(cfg, f"zero.sub_group_size={tenth}", "zero", sub_group_size=tenth))
    if z.stage > 0 and z.reduce_bucket_size and z.contiguous_gradients:
        # DeepSpeed allocates its reduce buckets whole, whatever the model's size.
        tenth = z.reduce_bucket_size // 10
        tried.append(_variant(cfg, f"zero.reduce_bucket_size={tenth}", "zero", reduce_bucket_size=tenth))
    if t.micro_batch_size > 1:
        half = t.micro_batch_size // 2
        tried.append(_variant(cfg, f"trainer.micro_batch_size={half}", "trainer", micro_batch_size=half))
    if not t.gradient_checkpointing:
        tried.append(
            _variant(cfg, "trainer.gradient_checkpointing=true", "trainer", gradient_checkpointing=True)
        )
    return tried


def _knob_variants(cfg: Config) -> list[tuple[str, Config]]:
    """The fixes that keep the stage and offload, first: ZeRO-3's gathered weights, kept for half of
    stage3_max_reuse_distance or up to stage3_max_live_parameters, whichever keeps more, and its prefetch,
    by stage3_prefetch_bucket_size (memory.zero3_live_params, from DeepSpeed's parameter coordinator), and
    the second reduce bucket overlap_comm allocates on ZeRO-2/3 (memory.bucket_bytes: ZeRO-1 holds
    two without it)."""
    z, tried = cfg.zero, []
    if z.stage == 3 and not cfg.offloads_params and zero3_kept_params(z) > LIVE:
        override = f"zero.stage3_max_live_parameters={LIVE} zero.stage3_max_reuse_distance={LIVE}"
        tried.append(
            _variant(cfg, override, "zero", stage3_max_live_parameters=LIVE, stage3_max_reuse_distance=LIVE)
        )
    if z.stage == 3 and (z.stage3_prefetch_bucket_size or 0) > LIVE:
        tenth = z.stage3_prefetch_bucket_size // 10
        tried.append(
            _variant(
                cfg, f"zero.stage3_prefetch_bucket_size={tenth}", "zero", stage3_prefetch_bucket_size=tenth
            )
        )
    if z.stage > 1 and z.overlap_comm and z.reduce_bucket_size and z.contiguous_gradients:
        tried.append(_variant(cfg, "zero.overlap_comm=false", "zero", overlap_comm=False))
    return tried


def _variant(cfg: Config, override: str, group: str, **change: object) -> tuple[str, Config]:
    """`cfg` as `override` would make it: `change` applied to its `group`."""
    return override, dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **change)})


def _fits(variant: Config, capacity: Capacity) -> bool:
    from pipeline import plan  # loaded by then: only a planned point misses the memory

    try:
        rules.check(variant)
    except ConfigError:
        return False
    return (
        shortfall(variant, plan.make(variant, Path(variant.outputs_dir), use_cpu=True).memory, capacity)
        is None
    )


def _either(changes: list[str]) -> str:
    return changes[0] if len(changes) == 1 else f"{', '.join(changes[:-1])} or {changes[-1]}"
