"""Typed schema of every config group, registered in Hydra's ConfigStore.

The YAML files in conf/ only set values; these dataclasses decide which keys exist and what
type each has, so a misspelt key or a wrong type is refused at compose time, by name, before
anything starts (DeepSpeed itself silently ignores unknown top-level keys).
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore


class OffloadDevice(Enum):
    none = "none"
    cpu = "cpu"
    nvme = "nvme"


class Provider(Enum):
    """Who implements an optimizer or scheduler: DeepSpeed's own, or the HF Trainer's (torch)."""

    deepspeed = "deepspeed"
    hf = "hf"


class DataSource(Enum):
    text = "text"  # the corpus file, byte tokens
    random = "random"  # uniform random tokens, like the reference benchmark


class Tokenizer(Enum):
    byte = "byte"  # 256 byte values: nothing to train or download


class CommDtype(Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass
class ZeroConf:
    stage: int = 2
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_scatter: bool = True
    allgather_partitions: bool = True
    allgather_bucket_size: int = 500_000_000
    # None means HF's "auto": derived from the model's hidden size at plan time.
    reduce_bucket_size: Optional[int] = None
    round_robin_gradients: bool = False
    sub_group_size: int = 1_000_000_000
    stage3_prefetch_bucket_size: Optional[int] = None
    stage3_param_persistence_threshold: Optional[int] = None
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000
    stage3_gather_16bit_weights_on_model_save: bool = True
    # dtype of gradient all-reduce/reduce-scatter (the guide's "NCCL collectives"); None: DeepSpeed's.
    communication_data_type: Optional[CommDtype] = None


@dataclass
class AioConf:
    block_size: int = 262144
    queue_depth: int = 32
    thread_count: int = 1
    single_submit: bool = False
    overlap_events: bool = True


@dataclass
class OffloadConf:
    device: OffloadDevice = OffloadDevice.none
    optimizer: bool = True
    # None: offload parameters exactly when ZeRO-3 allows it (the guide's ZeRO-3 examples do).
    params: Optional[bool] = None
    pin_memory: bool = True
    nvme_path: Optional[str] = None
    # bytes that must be free under nvme_path; None: estimated from the model's size.
    nvme_min_free: Optional[int] = None
    optimizer_buffer_count: int = 4
    fast_init: bool = False
    param_buffer_count: int = 5
    param_buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000
    aio: AioConf = field(default_factory=AioConf)


@dataclass
class PrecisionConf:
    name: str = "fp32"
    fp16: bool = False
    bf16: bool = False
    # fp16 dynamic loss scaling (loss_scale 0 = dynamic), as in the guide's ZeRO-3 example.
    loss_scale: float = 0.0
    loss_scale_window: int = 1000
    initial_scale_power: int = 16
    hysteresis: int = 2
    min_loss_scale: float = 1.0


@dataclass
class OptimizerConf:
    provider: Provider = Provider.deepspeed
    # DeepSpeed optimizer type (AdamW, Adam, Lamb) or HF TrainingArguments.optim (adamw_torch...)
    name: str = "AdamW"
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    # Has both a CPU and a GPU implementation, as optimizer offload needs.
    cpu_impl: bool = True


@dataclass
class SchedulerConf:
    provider: Provider = Provider.hf
    # DeepSpeed scheduler type (WarmupLR, WarmupDecayLR, WarmupCosineLR) or HF lr_scheduler_type.
    name: str = "linear"
    warmup_steps: int = 2
    warmup_type: str = "linear"
    cos_min_ratio: float = 0.0001
    warmup_min_ratio: float = 0.0


@dataclass
class ModelConf:
    name: str = "llama_tiny"
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: Optional[int] = None
    # None: the tokenizer's vocabulary size.
    vocab_size: Optional[int] = None
    attn_implementation: str = "sdpa"
    tie_word_embeddings: bool = False
    # ZeRO-3 only: build the model already partitioned (deepspeed.zero.Init), for models one
    # rank's host memory cannot hold whole. Its initial weights differ from the other stages'
    # for the same seed, so by default the model is built whole and partitioned at start.
    zero3_init: bool = False


@dataclass
class DataConf:
    name: str = "tiny_corpus"
    # A text file; relative paths are taken from the project root.
    path: str = "data/tiny_corpus.txt"
    tokenizer: Tokenizer = Tokenizer.byte
    seq_len: int = 128
    source: DataSource = DataSource.text


@dataclass
class TrainerConf:
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    max_steps: int = 30
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 1
    # Ranks per node, and nodes: world size = nproc_per_node x nnodes.
    nproc_per_node: int = 1
    nnodes: int = 1
    # Steps between checkpoints (0: none); resume picks the newest one up.
    save_steps: int = 0
    save_total_limit: int = 2
    torch_compile: bool = False
    dataloader_num_workers: int = 0
    # Steps left out of the step-time and tokens/s averages (compilation, allocator warm-up).
    timing_warmup_steps: int = 2


@dataclass
class PerfConf:
    """Speed choices layered over trainer/zero; None keeps the value those groups set."""

    name: str = "none"
    torch_compile: Optional[bool] = None
    micro_batch_size: Optional[int] = None
    gradient_checkpointing: Optional[bool] = None
    # DeepSpeed's own compiler (DeepCompile passes for ZeRO-1/3), the config's "compile" section.
    deepcompile: bool = False
    reduce_bucket_size: Optional[int] = None
    allgather_bucket_size: Optional[int] = None
    overlap_comm: Optional[bool] = None
    # ZeRO-3 only: parameters at or below this size stay whole on every GPU (no gather/release
    # per layer). Above the largest tensor, every parameter does: ZeRO-3 with ZeRO-2's speed.
    stage3_param_persistence_threshold: Optional[int] = None


@dataclass
class TrackingConf:
    enabled: bool = True
    # None: sqlite:///<outputs_dir>/mlflow.db, created before any run starts.
    uri: Optional[str] = None
    experiment: str = "zerosweep"
    run_name: Optional[str] = None
    system_metrics: bool = True


@dataclass
class LauncherConf:
    name: str = "local"
    # Slurm settings: read only when name is slurm (hydra/launcher is then submitit_slurm).
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    timeout_min: int = 60
    cpus_per_gpu: int = 1
    mem_gb: Optional[int] = None
    constraint: Optional[str] = None
    array_parallelism: int = 64
    additional_parameters: Any = field(default_factory=dict)
    setup: List[str] = field(default_factory=list)


@dataclass
class Config:
    zero: ZeroConf = field(default_factory=ZeroConf)
    offload: OffloadConf = field(default_factory=OffloadConf)
    precision: PrecisionConf = field(default_factory=PrecisionConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    perf: PerfConf = field(default_factory=PerfConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    launcher: LauncherConf = field(default_factory=LauncherConf)
    # Write and print the plan (DeepSpeed JSON, TrainingArguments, memory), train nothing.
    dry_run: bool = False
    # Where runs, sweeps and the MLflow store live; relative to the working directory.
    outputs_dir: str = "outputs"


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


register()
