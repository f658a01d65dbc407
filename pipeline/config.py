"""Typed schema of every config group, registered in Hydra's ConfigStore.

These dataclasses decide which keys exist, what type each has and its default; the YAML files
in conf/ state only what an option changes. A misspelt key or a wrong type is refused at
compose time, by name, before anything starts (DeepSpeed itself silently ignores unknown
top-level keys). Past composition the pipeline works on `Config` objects (`load`): typed
attributes, and they pickle to the ranks and Slurm tasks as they are.
"""

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.nodes import IntegerNode

GIB = 2**30  # the unit of every memory figure users see
# Where conf/ and the shipped data are: relative data paths are taken from here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# data=files: a file's suffix -> the datasets library's builder that reads it.
READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


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
    files = "files"  # the user's files (or saved dataset) through the datasets library


class ModelSource(Enum):
    built = "built"  # a Llama built from the sizes in the config (no weights to load)
    pretrained = "pretrained"  # model.name_or_path, loaded with from_pretrained


class Architecture(Enum):
    """The blocks of a model built from sizes (model.source=built)."""

    llama = "llama"  # rotary positions, RMSNorm, gated SiLU MLP (GQA and head_dim from the sizes)
    gpt2 = "gpt2"  # learned positions, LayerNorm, GELU MLP of intermediate_size, dropout 0.1


class DataFormat(Enum):
    text = "text"  # documents, tokenized and packed into seq_len blocks
    prompt_completion = "prompt_completion"  # pairs; the loss is on the completion only


class Tokenizer(Enum):
    auto = "auto"  # the pretrained model's own tokenizer; bytes for a model built from sizes
    byte = "byte"  # 256 byte values: nothing to train or download


class Dtype(Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class PeftMethod(Enum):
    """What a run trains: every weight, or a LoRA adapter on a frozen base (qlora: the base in 4 bits,
    bitsandbytes, on a CUDA GPU)."""

    none = "none"
    lora = "lora"
    qlora = "qlora"


class WarmupType(Enum):
    """How DeepSpeed's warmup schedulers rise to the lr: its WARMUP_LOG_RATE and WARMUP_LINEAR_RATE
    (deepspeed.runtime.lr_schedules; a test holds them equal). DeepSpeed takes a misspelt one for log
    without a word: as an enum it is refused when the config is composed."""

    log = "log"
    linear = "linear"


@dataclass
class ZeroConf:
    # 0: no ZeRO (DeepSpeed as a plain data-parallel engine); 1-3: what is partitioned.
    stage: int = 0
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_scatter: bool = True
    allgather_partitions: bool = True
    allgather_bucket_size: int = 500_000_000
    # None means HF's "auto": derived from the model's hidden size at plan time.
    reduce_bucket_size: int | None = None
    # Gradients copied to the host by all ranks in turn; None: on exactly when the optimizer is
    # offloaded (the guide: "for CPU offloading"). On (ZeRO-1/2), its checkpoints cannot go on with
    # another GPU count (DeepSpeed 0.19's universal checkpoint converts and loads them wrong): refused.
    round_robin_gradients: bool | None = None
    sub_group_size: int = 1_000_000_000
    stage3_prefetch_bucket_size: int | None = None
    stage3_param_persistence_threshold: int | None = None
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000
    stage3_gather_16bit_weights_on_model_save: bool = True
    # dtype of gradient all-reduce/reduce-scatter (the guide's "NCCL collectives"); None: DeepSpeed's.
    communication_data_type: Dtype | None = None
    # ZeRO++, ZeRO-3 only: qwZ all-gathers the weights quantized to int8, qgZ reduce-scatters the
    # gradients quantized to int4, and hpZ keeps a second copy of the weights partitioned over this
    # many ranks (1: off) so the forward's all-gathers stay inside a node: it must divide the ranks per node.
    zero_quantized_weights: bool = False
    zero_quantized_gradients: bool = False
    zero_hpz_partition_size: int = 1

    # The least value of each count and size (rules.py refuses less, naming the key; None: not checked).
    AT_LEAST: ClassVar[dict[str, int]] = {
        "zero_hpz_partition_size": 1,
        "allgather_bucket_size": 1,
        "reduce_bucket_size": 1,
        "sub_group_size": 1,
        "stage3_prefetch_bucket_size": 1,
        "stage3_max_live_parameters": 1,
        "stage3_max_reuse_distance": 1,
        "stage3_param_persistence_threshold": 0,
    }


@dataclass
class AioConf:
    block_size: int = 262144
    queue_depth: int = 32
    thread_count: int = 1
    single_submit: bool = False
    overlap_events: bool = True

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"block_size": 1, "queue_depth": 1, "thread_count": 1}


@dataclass
class OffloadConf:
    device: OffloadDevice = OffloadDevice.none
    optimizer: bool = True
    # None: offload parameters exactly when ZeRO-3 allows it (the guide's ZeRO-3 examples do).
    params: bool | None = None
    pin_memory: bool = True
    nvme_path: str | None = None
    # bytes that must be free under nvme_path; None: estimated from the model's size.
    nvme_min_free: int | None = None
    optimizer_buffer_count: int = 4
    fast_init: bool = False
    param_buffer_count: int = 5
    param_buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000
    aio: AioConf = field(default_factory=AioConf)

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {
        "optimizer_buffer_count": 1,
        "param_buffer_count": 1,
        "param_buffer_size": 1,
        "max_in_cpu": 0,
    }


@dataclass
class PrecisionConf:
    # One dtype per run: fp32, or mixed precision with bf16 or fp16 (fp16 needs a GPU).
    dtype: Dtype = Dtype.fp32
    # fp16 dynamic loss scaling (loss_scale 0 = dynamic), the guide's ZeRO-3 example's values.
    loss_scale: float = 0.0
    loss_scale_window: int = 1000
    initial_scale_power: int = 16
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    # TF32 matmuls and convolutions (TrainingArguments.tf32): true or false on an Ampere or newer GPU;
    # None leaves torch's default. HF raises for true without such a GPU: preflight refuses it first.
    tf32: bool | None = None
    # precision=fp8: the linear layers' matmuls in float8 (torchao's float8 training, dynamic
    # scaling), bf16 everywhere else. Recipe: torchao's (tensorwise, rowwise, rowwise_with_gw_hp).
    fp8: bool = False
    fp8_recipe: str = "tensorwise"
    # torchao's emulation: float8 numerics on any device, CPU included, at no speed-up (to check a
    # configuration's numerics where no fp8 GPU is).
    fp8_emulate: bool = False

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"loss_scale": 0}

    @property
    def fp16(self) -> bool:
        return self.dtype == Dtype.fp16

    @property
    def bf16(self) -> bool:
        return self.dtype == Dtype.bf16

    @property
    def half(self) -> bool:
        """Weights, gradients and activations in 16 bits (either kind)."""
        return self.dtype != Dtype.fp32

    @property
    def value_bytes(self) -> int:
        """Bytes of one weight, gradient or activation value in the training dtype."""
        return 2 if self.half else 4


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
    """DeepSpeed's schedulers take the keys below by DeepSpeed's own names (deepspeed.runtime.lr_schedules),
    each scheduler only its own (the plan sends those its class takes); HF's take warmup_steps only."""

    provider: Provider = Provider.hf
    # DeepSpeed scheduler type (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest) or HF
    # lr_scheduler_type.
    name: str = "linear"
    warmup_steps: int = 2
    # WarmupLR, WarmupDecayLR, WarmupCosineLR: DeepSpeed's default, log, is what the guide's JSON gets.
    warmup_type: WarmupType = WarmupType.log
    # WarmupLR, WarmupDecayLR: the lr warmup starts from (it rises to optimizer.lr).
    warmup_min_lr: float = 0.0
    # WarmupCosineLR: ratios of optimizer.lr where warmup starts and where the cosine ends.
    cos_min_ratio: float = 0.0001
    warmup_min_ratio: float = 0.0
    # OneCycle: the lr rises from cycle_min_lr to cycle_max_lr over cycle_first_step_size steps, falls
    # back over cycle_second_step_size (None: as many), then decays by decay_lr_rate every
    # decay_step_size steps (0: stays at cycle_min_lr). None: optimizer.lr for the top, a tenth of it
    # for the bottom (the span of DeepSpeed's command-line defaults), and one cycle over the run
    # (the first half of trainer.max_steps up). A stair count above 0 moves the lr in that many stairs.
    cycle_min_lr: float | None = None
    cycle_max_lr: float | None = None
    decay_lr_rate: float = 0.0
    cycle_first_step_size: int | None = None
    cycle_second_step_size: int | None = None
    cycle_first_stair_count: int = 0
    cycle_second_stair_count: int | None = None
    decay_step_size: int = 0
    # OneCycle: cycle beta1 inversely to the lr, between these. Off, unlike DeepSpeed's class (its
    # command line's default): on, DeepSpeed also sets every group's beta2 to 0.99 (rules.py holds it
    # to optimizer.beta2).
    cycle_momentum: bool = False
    cycle_min_mom: float = 0.8
    cycle_max_mom: float = 0.9
    decay_mom_rate: float = 0.0
    # LRRangeTest: the lr starts at lr_range_test_min_lr (None: optimizer.lr) and grows by
    # lr_range_test_step_rate times it every lr_range_test_step_size steps (in stairs, or continuously).
    lr_range_test_min_lr: float | None = None
    lr_range_test_step_size: int = 2000
    lr_range_test_step_rate: float = 1.0
    lr_range_test_staircase: bool = False

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {
        "warmup_steps": 0,
        "cycle_first_step_size": 1,
        "cycle_second_step_size": 0,
        "cycle_first_stair_count": 0,
        "cycle_second_stair_count": 0,
        "decay_step_size": 0,
        "lr_range_test_step_size": 1,
    }

    def deepspeed_values(self, lr: float, steps: int) -> dict[str, Any]:
        """Every DeepSpeed scheduler's keyword arguments by DeepSpeed's names: this group's keys, with
        what the Trainer shares (optimizer.lr, warmup and total steps) and the Nones resolved. The plan
        sends a scheduler those its class takes; the rules check them."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "warmup_type": self.warmup_type.value,
            # HF passes at least one warmup step to DeepSpeed (which refuses 0); match it, or HF objects.
            "warmup_num_steps": max(1, self.warmup_steps),
            "warmup_max_lr": lr,
            "total_num_steps": steps,
            "cycle_min_lr": lr / 10 if self.cycle_min_lr is None else self.cycle_min_lr,
            "cycle_max_lr": lr if self.cycle_max_lr is None else self.cycle_max_lr,
            "cycle_first_step_size": (
                max(1, steps // 2) if self.cycle_first_step_size is None else self.cycle_first_step_size
            ),
            "lr_range_test_min_lr": lr if self.lr_range_test_min_lr is None else self.lr_range_test_min_lr,
        }


@dataclass
class ModelConf:
    """A pretrained causal LM (name_or_path), or a Llama built from the sizes below (the
    defaults: a 0.4M-parameter model)."""

    source: ModelSource = ModelSource.built
    # source=pretrained: a directory that AutoModelForCausalLM and AutoTokenizer load (or a hub id
    # where the hub is reachable). Its config decides the sizes: the keys below are then not set.
    name_or_path: str | None = None
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    # None: the tokenizer's vocabulary size.
    vocab_size: int | None = None
    attn_implementation: str = "sdpa"
    tie_word_embeddings: bool = False
    architecture: Architecture = Architecture.llama
    # llama: the attention heads' width; None: hidden_size / num_attention_heads.
    head_dim: int | None = None
    # ZeRO-3 only: build the model already partitioned (deepspeed.zero.Init), for models one
    # rank's host memory cannot hold whole. Its initial weights differ from the other stages'
    # for the same seed, so by default the model is built whole and partitioned at start.
    zero3_init: bool = False

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {
        "hidden_size": 1,
        "intermediate_size": 1,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "vocab_size": 1,
        "head_dim": 1,
    }


@dataclass
class PeftConf:
    """peft=lora|qlora: a LoRA adapter (the peft library) trained on the frozen model; peft=none trains
    every weight. The adapter lands in <run dir>/adapter/ (trainer.merge_adapter: the merged model too)."""

    method: PeftMethod = PeftMethod.none
    # The adapter's rank, and its scale alpha / r on the update.
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Module names (or name suffixes) that get an adapter; None: every linear layer of the architecture
    # but the output layer (peft's "all-linear").
    target_modules: list[str] | None = None
    # Modules trained whole and saved with the adapter (e.g. [lm_head, embed_tokens] for new tokens).
    modules_to_save: list[str] = field(default_factory=list)
    # qlora: the 4-bit data type of the frozen base (nf4 or fp4) and its quantized quantization constants.
    quant_type: str = "nf4"
    double_quant: bool = True

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"r": 1}

    @property
    def enabled(self) -> bool:
        return self.method != PeftMethod.none

    @property
    def quantized(self) -> bool:
        return self.method == PeftMethod.qlora


@dataclass
class DataConf:
    source: DataSource = DataSource.text
    # source=text: a text file; relative paths are taken from the project root.
    path: str = "data/tiny_corpus.txt"
    # source=files: jsonl/json/csv/parquet/txt files or a dataset saved with save_to_disk; one
    # path or a list [a,b]. Eval: eval_files, or this fraction of the train set held out.
    train_files: Any = None
    eval_files: Any = None
    eval_fraction: float = 0.0
    format: DataFormat = DataFormat.text
    # The columns that hold the text (format=text) or the pairs (format=prompt_completion).
    text_field: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    tokenizer: Tokenizer = Tokenizer.auto
    seq_len: int = 128

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"seq_len": 1}

    @property
    def train_paths(self) -> list[Path]:
        return _as_paths(self.train_files)

    @property
    def eval_paths(self) -> list[Path]:
        return _as_paths(self.eval_files)

    @property
    def columns(self) -> dict[str, str]:
        """The columns the format reads, by the key that names each ({"text_field": "text"})."""
        keys = ["text_field"] if self.format == DataFormat.text else ["prompt_field", "completion_field"]
        return {key: getattr(self, key) for key in keys}

    @property
    def has_eval(self) -> bool:
        """An eval set: eval files, or a held-out fraction of the train files."""
        return self.source == DataSource.files and (self.eval_files is not None or self.eval_fraction > 0)


def _as_paths(value: str | list[str] | None) -> list[Path]:
    """data.train_files / eval_files: one path or a list of them."""
    if value is None:
        return []
    return [Path(p).expanduser().absolute() for p in ([value] if isinstance(value, str) else value)]


def is_saved_dataset(path: Path) -> bool:
    """A directory written by Dataset(Dict).save_to_disk, which data.train_files may name."""
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


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
    # Steps between checkpoints (0: none); resume picks the newest one up, also on another GPU count
    # (converted to DeepSpeed's universal checkpoint: pipeline/rank/checkpoints.py).
    save_steps: int = 0
    save_total_limit: int = 2
    torch_compile: bool = False
    # Liger's Triton kernels (TrainingArguments.use_liger_kernel; CUDA, model types Liger knows): RMSNorm,
    # RoPE, SwiGLU, and a cross-entropy fused with the head's matmul that never holds the whole logits.
    liger_kernel: bool = False
    # Data-loader worker processes per rank. 0: each rank cuts its batches itself, from tensors in
    # memory or memory-mapped Arrow files; on 2 GPUs, 2 workers a rank cost ZeRO-2 54-101 ms a step.
    dataloader_num_workers: int = 0
    # DeepSpeed's own compiler (DeepCompile passes for ZeRO-1/3), the config's "compile" section.
    deepcompile: bool = False
    # Steps left out of the step-time and tokens/s averages (compilation, allocator warm-up).
    timing_warmup_steps: int = 2
    # A rank that completes no step for this long (a collective that never returns, a dead peer)
    # ends the point FAILED ("hang"), every rank's Python stack saved to the run (hang.txt). 0: off.
    hang_timeout_s: int = 1800
    # A loss that is nan or inf ends the run FAILED ("loss is nan/inf at step N"); false: train on,
    # and its metrics say nan (never a number it is not).
    stop_on_nan: bool = True
    # Steps between evaluations when there is an eval set (0: only at the end).
    eval_steps: int = 0
    # Save the trained model (16-bit weights consolidated under ZeRO-3, and the tokenizer) as a
    # Hugging Face model directory, <run dir>/model/, also logged to the MLflow run.
    save_model: bool = True
    # Also write fp32 weights, from a ZeRO checkpoint (DeepSpeed's zero_to_fp32), to <run dir>/model_fp32/.
    export_fp32: bool = False
    # peft=lora|qlora: also write the base with the adapter merged into it, a plain Hugging Face model
    # directory, to <run dir>/model/ (the adapter alone is always saved, to <run dir>/adapter/).
    merge_adapter: bool = False

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": 1,
        "nproc_per_node": 1,
        "nnodes": 1,
        "logging_steps": 1,
        "save_total_limit": 2,  # a broken newest checkpoint falls back to the one before
        "eval_steps": 0,
        "save_steps": 0,
        "timing_warmup_steps": 0,
        "dataloader_num_workers": 0,
        "seed": 0,
        "hang_timeout_s": 0,
    }


@dataclass
class TrackingConf:
    enabled: bool = True
    # None: sqlite:///<outputs_dir>/mlflow.db, created before any run starts.
    uri: str | None = None
    experiment: str = "zerosweep"
    run_name: str | None = None
    # Host CPU/memory (and GPU with nvidia-ml-py) sampled into the run every 2 s while it trains.
    system_metrics: bool = True
    # Seconds rank 0 gathers step metrics before writing them in one batch (MLflow's asynchronous
    # logging): one write a step costs its process ~7 ms of Python. 0: a write each step. Flushed
    # at the end, on failure, on a hang and with each checkpoint.
    buffer_s: int = 10

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"buffer_s": 0}


@dataclass
class LauncherConf:
    # local: this machine; slurm: with -m, a Slurm job per point (hydra/launcher is submitit_slurm).
    name: str = "local"
    # The Slurm settings below are read only when name is slurm (docs/slurm.md).
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # --time; submitit signals the job 120 s before it to checkpoint and requeue
    timeout_min: int = 60
    # --cpus-per-task (one task per GPU)
    cpus_per_gpu: int = 1
    # --mem per node (None: the cluster's default per CPU); also the host memory a sweep's points
    # are held against before they are submitted
    mem_gb: int | None = None
    # GPU memory of the nodes the points run on, held against each point's memory plan before it
    # is submitted; when set, it also stands in for a local GPU (and is checked without one)
    gpu_mem_gib: float | None = None
    constraint: str | None = None
    # how many points run at once (the sweep is one job array)
    array_parallelism: int = 64
    # any other sbatch option, e.g. '{mail-type: END, exclusive: true}'
    additional_parameters: Any = field(default_factory=dict)
    # lines run before the job, e.g. '["module load cuda/12.4"]'
    setup: list[str] = field(default_factory=list)

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"timeout_min": 1, "cpus_per_gpu": 1, "array_parallelism": 1}


@dataclass
class SweepConf:
    # auto: rerunning a sweep that did not finish carries on in it (its finished points are not
    # trained again, the others resume from their newest checkpoint); new: always a new sweep; or
    # a sweep's dir or parent run id, to carry on in that one.
    resume: str = "auto"
    # A point that fails while it trains is tried again up to this many times (each try a run of its
    # own; the last one decides). A point refused by the checks is never retried.
    retries: int = 0

    # The least value of each count and size.
    AT_LEAST: ClassVar[dict[str, int]] = {"retries": 0}


@dataclass
class SearchConf:
    """search=fastest (pipeline/sweep/search): the fastest config that fits, found with Optuna. Each list
    is one knob's space (conf/search/fastest.yaml); narrow or widen it with search.KEY=[a,b]."""

    # Points measured (trained here, or found in MLflow for the same config and host); points that
    # cannot fit, or that a rule refuses, are never started and not counted.
    trials: int = 12
    # Timed steps per trial, after trainer.timing_warmup_steps (where compilation happens).
    steps: int = 3
    # Trials training at once: with launcher=slurm each trial is a Slurm job, so several fit where the
    # cluster has GPUs for them; here (launcher=local) one after another, as they would share the GPUs.
    parallel: int = 1
    zero: list[str] = field(default_factory=list)
    offload: list[str] = field(default_factory=list)
    # Micro batches to try; each one's accumulation keeps the global batch of trainer.micro_batch_size
    # x gradient_accumulation_steps x ranks (the user's batch is a constraint). Those that do not
    # divide it are left out.
    micro_batch_size: list[int] = field(default_factory=list)
    gradient_checkpointing: list[bool] = field(default_factory=list)
    perf: list[str] = field(default_factory=list)
    # precision options; null: the user's precision. fp8 is tried only where the user trains in bf16
    # (fp8 is bf16 with float8 matmuls), and only started on a GPU that has fp8.
    precision: list[str | None] = field(default_factory=list)
    # zero.reduce_bucket_size and allgather_bucket_size together; null: the plan's own sizes.
    bucket_size: list[int | None] = field(default_factory=list)
    # A trial stops once its mean step time is this fraction slower than the best trial's at that step.
    prune_margin: float = 0.1
    # The winner's recipe, <outputs_dir>/conf/experiment/<name>.yaml; None: fastest_<model>.
    name: str | None = None


@dataclass
class Config:
    zero: ZeroConf = field(default_factory=ZeroConf)
    offload: OffloadConf = field(default_factory=OffloadConf)
    precision: PrecisionConf = field(default_factory=PrecisionConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    peft: PeftConf = field(default_factory=PeftConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    launcher: LauncherConf = field(default_factory=LauncherConf)
    sweep: SweepConf = field(default_factory=SweepConf)
    # search=fastest: search the fastest config that fits instead of training this one.
    search: SearchConf | None = None
    # DeepSpeed keys no group covers, passed through as written (deepspeed.wall_clock_breakdown=true,
    # deepspeed.flops_profiler.enabled=true): DeepSpeed's own config parser checks them before anything
    # starts, a typo refused with the closest name it knows; a key a group covers is refused with that
    # group's key (rules.COVERED).
    deepspeed: dict[str, Any] = field(default_factory=dict)
    # Write and print the plan (DeepSpeed JSON, TrainingArguments, memory), train nothing.
    dry_run: bool = False
    # Where runs, sweeps and the MLflow store live; relative to the working directory.
    outputs_dir: str = "outputs"
    # Hold each point's memory plan against the GPU (and host) memory before it starts: a single
    # run that does not fit is refused, a sweep's point skipped. false: start it anyway.
    check_fit: bool = True

    @property
    def world_size(self) -> int:
        """Ranks in all: trainer.nproc_per_node on each of trainer.nnodes nodes."""
        return self.trainer.nproc_per_node * self.trainer.nnodes

    @property
    def batch_per_rank(self) -> int:
        """Sequences each rank takes per optimizer step: micro batch x accumulation."""
        return self.trainer.micro_batch_size * self.trainer.gradient_accumulation_steps

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step on the planned ranks: micro batch x accumulation x ranks."""
        return self.batch_per_rank * self.world_size

    @property
    def compiled(self) -> bool:
        """torch.compile: asked for, or on for fp8 (compiled, torchao's casts fuse into the matmuls;
        eager fp8 is slower than bf16), unless emulated (numerics only, on any device)."""
        fp8 = self.precision.fp8 and not self.precision.fp8_emulate
        return self.trainer.torch_compile or fp8

    @property
    def offloads_optimizer(self) -> bool:
        return self.offload.device != OffloadDevice.none and self.offload.optimizer

    @property
    def offloads_params(self) -> bool:
        """Parameter offload is on when asked for, or by default whenever ZeRO-3 offloads at all."""
        off = self.offload
        if off.device == OffloadDevice.none:
            return False
        return off.params if off.params is not None else self.zero.stage == 3

    @property
    def round_robin(self) -> bool:
        """zero.round_robin_gradients as DeepSpeed gets it: unset, on where the optimizer is offloaded."""
        z = self.zero
        return z.round_robin_gradients if z.round_robin_gradients is not None else self.offloads_optimizer


def load(node: DictConfig | dict) -> Config:
    """A composed config as schema objects, interpolations resolved (Hydra's own node, which
    callbacks see, is left out). Raises OmegaConf's errors for keys or values it does not take."""
    if isinstance(node, DictConfig) and "hydra" in node:
        node = OmegaConf.masked_copy(node, [key for key in node if key != "hydra"])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), node))


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def accept_whole_floats() -> None:
    """An integer key takes a whole number written as a float, as the guide writes sizes
    (zero.reduce_bucket_size=5e8, or 5e8 in a recipe), as that integer. OmegaConf refuses every float
    for an int, in Hydra's own composition of the job too, so its integer node is taught this here,
    where every process that composes gets the schema. A fraction (5.5) is still refused (compose.py
    names the key)."""
    refuse = IntegerNode._validate_and_convert_impl

    def convert(node: IntegerNode, value: Any) -> int:
        if type(value) is float and value.is_integer():
            return int(value)
        return refuse(node, value)

    IntegerNode._validate_and_convert_impl = convert


register()
accept_whole_floats()
