"""Memory a point is expected to need, from DeepSpeed's own model-state estimators."""

from dataclasses import dataclass

from pipeline.config import Config, OffloadDevice
from pipeline.rules import offloads_optimizer, offloads_params

# Mixed-precision Adam keeps 16 bytes per parameter: fp16/bf16 weights and grads (2 + 2), fp32
# master weights, momentum and variance (4 + 4 + 4); fp32 training the same 16 (4 + 4 + 8).
STATE_BYTES_PER_PARAM = 16


@dataclass
class MemoryPlan:
    """Expected bytes: per GPU (model states, activations), per node's host memory, on NVMe."""

    gpu_model_states: int
    gpu_activations: int
    host_model_states: int
    nvme: int


def estimate(cfg: Config, params: int, largest_layer: int, hidden: int, layers: int) -> MemoryPlan:
    """Model states per GPU, host and NVMe from DeepSpeed's estimators, plus activations."""
    ranks, nodes = cfg.trainer.nproc_per_node, cfg.trainer.nnodes
    stage = cfg.zero.stage
    to_cpu = offloads_optimizer(cfg)
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        host, gpu, _ = estimate_zero3_model_states_mem_needs(
            params,
            largest_layer,
            ranks,
            nodes,
            cpu_offload=to_cpu,
            cpu_offload_params=offloads_params(cfg),
            zero_init=True,
        )
        if (cfg.zero.stage3_param_persistence_threshold or 0) >= largest_layer:
            # Every weight persistent (perf=resident): each GPU also holds them all, whole.
            gpu += params * (2 if cfg.precision.half else 4)
    elif stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        host, gpu = estimate_zero2_model_states_mem_needs(params, ranks, nodes, cpu_offload=to_cpu)
    else:
        host, gpu = 0, STATE_BYTES_PER_PARAM * params
    nvme = 0
    if cfg.offload.device == OffloadDevice.nvme:
        # What leaves host memory for the drive: optimizer states and parameters, this node's share.
        nvme = STATE_BYTES_PER_PARAM * params * ranks // (ranks * nodes)
    return MemoryPlan(
        gpu_model_states=int(gpu),
        gpu_activations=activation_bytes(cfg, hidden, layers),
        host_model_states=int(host),
        nvme=int(nvme),
    )


def activation_bytes(cfg: Config, hidden: int, layers: int) -> int:
    """Korthikanti et al.'s per-layer activation size, s*b*h*34 bytes in 16-bit (the attention
    score term is dropped: SDPA does not store it); only layer inputs under checkpointing."""
    s, b = cfg.data.seq_len, cfg.trainer.micro_batch_size
    fp32_factor = 1 if cfg.precision.half else 2
    per_layer = (2 if cfg.trainer.gradient_checkpointing else 34) * s * b * hidden
    return per_layer * layers * fp32_factor
