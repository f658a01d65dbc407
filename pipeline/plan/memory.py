"""Memory a point is expected to need per GPU, on the host and on NVMe.

Host and NVMe come from DeepSpeed's own model-state estimators. The GPU figure is the peak of
the backward pass, which is where the measured peaks sit (benchmarks/RESULTS.md: 1B Llama on
H100s, every ZeRO stage, CPU and NVMe offload, the perf presets, 1 and 2 GPUs), or the optimizer
step's where the activations are small. At the backward's first step: the model states that live
through it (the 16-bit gradients are made later), everything the forward pass saved (each layer's
activations, the loss's logits and log-softmax) and the loss's gradients; or, once those are freed,
ZeRO's reduce buckets in their place. The constants below are counts of bytes, measured phase by
phase (tests/test_memory.py holds the peaks; the bar is 10%).
"""

from dataclasses import dataclass, field

from pipeline.config import GIB, Config, ModelSource, OffloadDevice, ZeroConf

# Mixed-precision Adam keeps 16 bytes per parameter: fp16/bf16 weights and grads (2 + 2), fp32
# master weights, momentum and variance (4 + 4 + 4); fp32 training the same 16 (4 + 4 + 8).
STATE_BYTES_PER_PARAM = 16
# The model states at the backward's peak, its first step: no gradients yet (the optimizers set them to
# None after each step; ZeRO-1/2 make their 16-bit gradient partition, 2 bytes a parameter per rank, as
# backward goes on, and the fp32 one in the optimizer step only). Each rank holds the weights (16-bit
# under ZeRO-0/1/2, 32 under fp32) and, of its partition, the fp32 master weights (4; the weights
# themselves under fp32 ZeRO-0) and Adam's momentum and variance (8). Measured phase by phase on an
# H100 (the 1B Llama, rank 0 of fake worlds of 8 and 64, benchmarks/RESULTS.md): ZeRO-1/2 hold
# 2 + 12/N bytes a parameter at the forward's start, ZeRO-3 16/N.
MASTER_AND_ADAM_BYTES = 12
# ZeRO-0 in 16 bits: DeepSpeed 0.19.8's engine (`_do_optimizer_sanity_check`) wraps the optimizer in
# FP16_Optimizer (fp16/fused_optimizer.py) for fp16 and, as DDP_BFLOAT16, for bf16 too: 16-bit weights
# 2, fp32 master 4, Adam 8; its gradients are set to None after each step (`zero_grad`), its fp32
# gradients exist in `step` only. Only bf16 with data_types.grad_accum_dtype=fp32 takes the
# BF16_Optimizer: 16-bit weights 2, fp32 master 4, Adam 8 and the fp32 gradient accumulator 4, a flat
# buffer it allocates when it starts (`fp32_groups_gradients_flat`, bf16_optimizer.py). fp32 training
# has no wrapper: the weights are the master, 4 + 8. The 1B's ZeRO-0 and 1-GPU ZeRO-2 bf16 peaks are
# equal (26.8 GiB, tests/test_memory.py), as 14 bytes each make them.
ZERO0_BYTES_PER_PARAM, ZERO0_BF16_OPTIMIZER_BYTES, ZERO0_FP32_BYTES = 14, 18, 12
# ZeRO-3 with its parameters offloaded holds on each GPU the 16-bit weights it fetched and keeps
# (zero3_live_params), one GPU too: its partitions wait in host memory, the fp32 gradient partition
# as well (`grad_partitions_flat_buffer`, pinned host memory under offload: stage3.py). Measured: the
# 1B on one H100, 16.3 GiB, CPU and NVMe alike, the 1.75 GiB of its weights beside the activations.
ZERO3_OFFLOAD_GPU_BYTES = 2
# ZeRO-3 on GPU: each rank's partition, 16 bytes a parameter (16-bit weights and gradients 2 + 2, fp32
# master 4, Adam 8; its 16-bit gradient partition persists, the fp32 one is made in the optimizer step),
# measured at the forward's start (0.29 GiB for the 1B in a fake world of 64, 14.09 on one GPU). Beside
# it, on more than one GPU, the 16-bit weights of the parameters kept gathered (zero3_live_params): the
# forward leaves 1.75 GiB more than at the other stages for the 1B, 2 bytes a parameter. On one GPU the
# partition is the parameter itself: nothing is gathered (the forward leaves what it does at ZeRO-2).
ZERO3_PARTITION_BYTES = 16
ZERO3_GATHERED_BYTES = {"one GPU": 0, "more": 2}
# ZeRO-3 allocates its reduce bucket when it starts (`ipg_buckets`, stage3.py: one for each
# communication dtype, overlap_comm or not), so it lives through backward whole, unlike ZeRO-1/2's
# (bucket_bytes). Left to "auto" (hidden^2 elements), negligible; perf=compile_mbs16's 1e9, 1.86 GiB.
ZERO3_BUCKETS = 1
# Under offload=nvme a rank's host memory holds the pinned swap buffers, not the states: the 16-bit
# parameters' (param_buffer_count x param_buffer_size), the optimizer's fp32 states'
# (optimizer_buffer_count x the largest sub-group: sub_group_size or the rank's partition, if
# smaller), the fp32 gradient partition, and the rank's runtime (Python, torch, the CUDA context:
# 2.2-2.4 GiB measured on an H100 without offload). Measured: 1B 22.3 GiB, the small Llama 5.1.
NVME_RANK_RUNTIME = int(2.3 * GIB)
# The optimizer step: the states backward leaves (16-bit weights, whole under ZeRO-0/1/2; each rank's
# partition of the 16-bit gradients, fp32 master and Adam; under ZeRO-3 its partition of everything) and
# 6 bytes for each parameter of its partition that the step makes and frees (the fp32 gradients and a
# flat copy). Measured phase by phase on an H100: 6.0 bytes every time (ZeRO-2 and ZeRO-3, 1 to 64 ranks,
# the 1B Llama and GPT-2 large). It is the peak where the activations are small: GPT-2 large with
# checkpointing at micro batch 1, 15.95 GiB at the step against 13.84 in backward.
STEP_BYTES = 6
# Each rank's process also holds, before its engine starts, the model as it was loaded. A model built
# from its config is whole, in fp32 (DeepSpeed casts and moves it later), and a tied output head is made
# whole first and tied to the embedding after (transformers' post_init): the 256k x 2048 head's 1.95 GiB
# is part of the build's peak (7.24 GiB on CPU, 5.29 after). Loaded with from_pretrained under ZeRO-3,
# each rank keeps its share. Beside it Python, torch, transformers and DeepSpeed: 1.1 GiB. The 1B Llama
# as rank 0 of fake worlds of 8, 64 and 512 on an H100: 4.5 GiB after the build, peak 4.64; the tied
# big-vocabulary Llama 7.83 in worlds of 1 and 8.
# zero.Init on a GPU builds each partition there; the host holds it only while ZeRO-3's engine makes one
# flat buffer of it (`defragment`, zero/utils.py: the 16-bit partition, through host memory). Once
# training, a rank with CUDA's libraries loaded holds 1.77 GiB whatever its partition (the 6.7B Llama
# under zero.Init as rank 0 of fake worlds of 64 and 512 on an H100; at 8, 2.78: 1.19 after the build
# and its 1.57 GiB partition staged): the least a GPU rank holds.
RANK_LOAD_RUNTIME, FP32_BYTES = int(1.1 * GIB), 4
RANK_GPU_RUNTIME = int(1.77 * GIB)
# What each layer's forward keeps for backward, bytes a token per hidden unit in 16 bits: the model's own
# count (model.layer_saved_bytes, on the meta device), the 1B Llama's LLAMA_LAYER_SAVED where the
# architecture could not be counted (GPT-2 large keeps 64.1). Under checkpointing, each layer's 16-bit
# input only, plus one layer recomputed in full. The 1B at 8 x 1024: 16 layers x 45.54 and the logits'
# 6 bytes (below) make 12.85 GiB; the forward leaves 12.97 more than it found, at every ZeRO stage.
CHECKPOINTED_BYTES = 2
LLAMA_LAYER_SAVED = 45.54
# The loss's terms, bytes a token per vocabulary entry. The forward keeps the logits the model returns (in
# their dtype: 2 in 16 bits, 4 in fp32) and their fp32 log-softmax (4). Backward's first step adds the
# loss's gradients: the upcast logits' fp32 gradient (4) and its cast to the logits' dtype (2; none under
# fp32, where the upcast is the logits themselves). Measured: backward adds 1.47 GiB to what the forward
# left at every stage, LoRA's too, 6 x 8192 x 32000 bytes.
LOG_SOFTMAX_BYTES, LOSS_GRAD_FP32_BYTES = 4, 4
# peft=lora|qlora: the trainable parameters (the adapter) go through DeepSpeed's estimators as a model of
# their own; the frozen base has no gradients, no fp32 master and no optimizer states, only its weights:
# 16 bits under bf16/fp16 (DeepSpeed casts the module), 32 under fp32, and under QLoRA 4-bit nf4 with a
# blocksize-64 fp32 absmax double-quantized to 8 bits (a 256-block fp32 second level): 0.5 + 1/64 +
# 4/(64*256) bytes a weight. The 1B's QLoRA on ZeRO-2: 19.25 GiB planned, 18.31 measured on an H100.
QLORA_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Liger's kernels (trainer.liger_kernel) keep less of a Llama layer than eager PyTorch: its RMSNorm keeps
# its 16-bit input and not the fp32 upcast (4 bytes a hidden unit less, two norms a layer) and its
# SwiGLU recomputes the SiLU instead of keeping it (2 bytes an intermediate unit, 5504 / 2048 a hidden
# unit); its RoPE keeps nothing either way. 45.54 - 8 - 5.38 = 32.16 bytes, 0.706 of eager's (the
# intermediates torch.compile fuses away too: 0.707, counted on CPU). The 1B at 32 x 1024, ZeRO-2 on
# one H100: 46.8 GiB measured, 46.5 planned.
LIGER_LAYER_FRACTION = (LLAMA_LAYER_SAVED - 2 * 4 - 2 * 5504 / 2048) / LLAMA_LAYER_SAVED
# LoRA's dropout saves, for each adapted layer, its dropped-out input in 16 bits and the mask (1 byte);
# the frozen base's linear layers save no input for a weight gradient (16 bits each, in the full
# fine-tune's count): 1B Llama, ZeRO-2, one H100, r=16 on every linear layer, 19.4 GiB measured (20.4
# planned: the count charges the forward 4.2 GiB over the full fine-tune's, 3.0 measured). Not under
# ZeRO-3 (see frozen_inputs_saved): 21.8 GiB measured there, 2.4 more, as the count says.
LORA_DROPOUT_BYTES, FROZEN_INPUT_BYTES = 3, 2
# torch.compile fuses elementwise ops and keeps fewer intermediates: 0.68 of the eager bytes, the loss's
# terms included (the Trainer passes the labels, so the loss runs in the compiled forward). A layer alone
# keeps 0.707 of eager's (counted on CPU); the measured peaks, less the model states, give 0.67-0.70 of
# the eager layers, logits and loss gradients together (ZeRO-2 micro batch 8, 16 and 32 on 1 and 2 GPUs,
# ZeRO-3 resident, ZeRO-2 offload). ZeRO-3 gathering its weights per module keeps more (0.74 under
# DeepCompile, 0.80 offloaded at micro batch 16: its hooks break the graph), planned 5-7% under.
COMPILED_FRACTION = 0.68
# precision=fp8 (always compiled): what a layer keeps under torch.compile, as a fraction of bf16's. The
# float8 linears' autograd function saves its bf16 input, but the compiled graph's partitioner keeps the
# float8 casts instead wherever the recipe's backward takes them; rowwise_with_gw_hp's weight gradient
# needs the bf16 input, which is then kept. Counted on CPU (benchmarks/fp8_saved.py, a Llama layer under
# Inductor with torchao's emulated float8): 23.09 bytes a token per hidden unit against bf16's 32.59. The
# head stays bf16 (model.to_float8), so the logits do not change. 1B at 32 x 1024 on one H100: 41.3 GiB.
FP8_SAVED_FRACTION = {"tensorwise": 0.708, "rowwise": 0.708, "rowwise_with_gw_hp": 1.0}


@dataclass
class MemoryPlan:
    """Expected bytes: per GPU (model states, what the forward saved, what backward adds to it, and
    their peak together, or the optimizer step's), per node's host memory for the model as its ranks
    load it or the offloaded model states, whichever is more (under NVMe, what the states pass
    through: see nvme_host_bytes), on NVMe."""

    gpu_model_states: int
    gpu_buffers: int  # what backward adds: the loss's gradients or ZeRO's buckets (see buffer_bytes)
    gpu_activations: int  # what the forward saved: the layers' activations, the logits
    host_model_states: int
    nvme: int
    gpu_step: int = 0  # the optimizer step's peak, where it is on the GPU (see STEP_BYTES)
    gpu_peak: int = field(init=False)

    def __post_init__(self) -> None:
        self.gpu_peak = max(self.gpu_backward, self.gpu_step)

    @property
    def gpu_backward(self) -> int:
        """The backward pass's peak: the model states, what the forward saved, and what backward adds
        (the loss's gradients at its first step, or ZeRO's buckets once those are freed)."""
        return self.gpu_model_states + self.gpu_buffers + self.gpu_activations


@dataclass
class ModelShape:
    """What memory depends on in a model: its sizes, not its weights."""

    params: int
    largest_layer: int
    hidden: int
    layers: int
    vocab: int
    # peft: the trainable parameters (None: all), the base weights stored in 4 bits (QLoRA), the inputs
    # of the adapted layers per layer per token (LoRA's dropout keeps a copy of each), and the base's
    # linear inputs that only a weight gradient needs (adapter.sizes).
    trainable: int | None = None
    quantized: int = 0
    adapted_inputs: int = 0
    frozen_inputs: int = 0
    # Bytes one layer's forward keeps a token per hidden unit (model.layer_saved_bytes); 0: not counted
    # (the architecture does not run on the meta device), the 1B Llama's figure then.
    layer_saved: float = 0.0
    # A tied output head's elements (vocabulary x hidden; 0: untied): made whole at build, then tied.
    tied_head: int = 0

    @property
    def activation_bytes(self) -> float:
        """Bytes one layer keeps a token per hidden unit: its own count, else the 1B Llama's."""
        return self.layer_saved or LLAMA_LAYER_SAVED

    @property
    def trained(self) -> int:
        """Parameters with gradients, fp32 master weights and optimizer states."""
        return self.params if self.trainable is None else self.trainable

    def frozen_bytes(self, half: bool) -> int:
        """The frozen base's weights: 16-bit (32 under fp32), the quantized ones in 4 bits."""
        plain = self.params - self.trained - self.quantized
        return int(plain * (2 if half else 4) + self.quantized * QLORA_BYTES)


def estimate(cfg: Config, shape: ModelShape) -> MemoryPlan:
    host, gpu = model_states(cfg, shape)
    nvme = 0
    if cfg.offload.device == OffloadDevice.nvme:
        # What leaves host memory for the drive: optimizer states and parameters, this node's share.
        frozen = shape.frozen_bytes(cfg.precision.half) if cfg.offloads_params else 0
        nvme = (STATE_BYTES_PER_PARAM * shape.trained + frozen) // cfg.trainer.nnodes
        host = nvme_host_bytes(cfg, shape.trained)
    elif not (cfg.offloads_optimizer or cfg.offloads_params):
        host = 0  # DeepSpeed's estimate here is the load below with a 1.5x margin: 13% over the measured
    return MemoryPlan(
        gpu_model_states=int(gpu),
        gpu_buffers=buffer_bytes(cfg, shape),
        gpu_activations=activation_bytes(cfg, shape),
        host_model_states=int(max(host, load_host_bytes(cfg, shape))),
        nvme=int(nvme),
        gpu_step=step_bytes(cfg, shape),
    )


def step_bytes(cfg: Config, shape: ModelShape) -> int:
    """The GPU's bytes at the optimizer step's peak (STEP_BYTES); none where the step runs on the host."""
    if cfg.offloads_optimizer or cfg.offloads_params:
        return 0
    n, trained = cfg.world_size, shape.trained
    weights = cfg.precision.value_bytes
    frozen = shape.frozen_bytes(cfg.precision.half)
    if cfg.zero.stage == 0:
        return (STATE_BYTES_PER_PARAM + STEP_BYTES) * trained + frozen
    if cfg.zero.stage == 3:
        return (STATE_BYTES_PER_PARAM + STEP_BYTES) * trained // n + frozen // n
    return weights * trained + (STATE_BYTES_PER_PARAM - weights + STEP_BYTES) * trained // n + frozen


def load_host_bytes(cfg: Config, shape: ModelShape) -> int:
    """A node's host memory while its ranks load the model and start their engines (see
    RANK_LOAD_RUNTIME): without offload, the peak wherever the model is built whole in every rank."""
    built = cfg.model.source == ModelSource.built and not cfg.peft.enabled  # peft loads a saved base
    if cfg.zero.stage == 3 and built and cfg.model.zero3_init:
        loaded = cfg.precision.value_bytes * shape.params // cfg.world_size  # defragment's staging
    elif built:
        loaded = FP32_BYTES * (shape.params + shape.tied_head)
    else:
        loaded = FP32_BYTES * shape.params // (cfg.world_size if cfg.zero.stage == 3 else 1)
    return cfg.trainer.nproc_per_node * max(RANK_LOAD_RUNTIME + loaded, RANK_GPU_RUNTIME)


def nvme_host_bytes(cfg: Config, params: int) -> int:
    """Host memory a node needs under offload=nvme: DeepSpeed's estimate is CPU offload's (all
    states in host memory), but NVMe keeps there only what passes through (see NVME_RANK_RUNTIME)."""
    ranks, off = cfg.trainer.nproc_per_node, cfg.offload
    per_rank = params // cfg.world_size
    host = NVME_RANK_RUNTIME
    if cfg.offloads_params:
        host += off.param_buffer_count * off.param_buffer_size * cfg.precision.value_bytes
    if cfg.offloads_optimizer:
        host += (off.optimizer_buffer_count * min(cfg.zero.sub_group_size, per_rank) + per_rank) * 4
    return ranks * host


def model_states(cfg: Config, shape: ModelShape) -> tuple[int, int]:
    """(host, per GPU) bytes of model states during backward: the trained parameters' from DeepSpeed's
    estimators, and a frozen base's weights (peft) where ZeRO keeps them."""
    host, gpu = trained_states(cfg, shape)
    frozen = shape.frozen_bytes(cfg.precision.half)
    if not frozen:
        return host, gpu
    if cfg.zero.stage < 3:  # ZeRO-0/1/2 partition what the optimizer holds: frozen weights stay whole
        return host, gpu + frozen
    live = min(shape.params - shape.trained, cfg.zero.stage3_max_live_parameters)
    gathered = int(frozen * live / (shape.params - shape.trained))  # what ZeRO-3 gathers of the base
    if cfg.offloads_params:  # each rank's partition of the base waits in its node's host memory
        return host + frozen // cfg.trainer.nnodes, gpu + gathered
    if cfg.world_size == 1:  # the partition is the base itself: nothing gathered (ZERO3_GATHERED_BYTES)
        gathered = 0
    return host, gpu + frozen // cfg.world_size + gathered


def trained_states(cfg: Config, shape: ModelShape) -> tuple[int, int]:
    """(host, per GPU) bytes of the trained parameters' states during backward, from DeepSpeed's
    estimators (all parameters without an adapter)."""
    ranks, nodes = cfg.trainer.nproc_per_node, cfg.trainer.nnodes
    params, stage = shape.trained, cfg.zero.stage
    to_cpu = cfg.offloads_optimizer
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        host, gpu, _ = estimate_zero3_model_states_mem_needs(
            params,
            shape.largest_layer,
            ranks,
            nodes,
            cpu_offload=to_cpu,
            cpu_offload_params=cfg.offloads_params,
            zero_init=True,
        )
        live = zero3_live_params(cfg, shape)
        if cfg.offloads_params:  # the estimate: the largest layer, 4 bytes a parameter of it
            return host, gpu + ZERO3_OFFLOAD_GPU_BYTES * live
        # The partition (ZERO3_PARTITION_BYTES), not the estimate's 18 bytes and largest layer; with the
        # optimizer alone offloaded (no measured peak), the 16-bit weights' and gradients' partitions.
        gpu = (4 if to_cpu else ZERO3_PARTITION_BYTES) * params // cfg.world_size
        gpu += ZERO3_GATHERED_BYTES["one GPU" if cfg.world_size == 1 else "more"] * live
        if (cfg.zero.stage3_param_persistence_threshold or 0) >= shape.largest_layer:
            # Every weight persistent (perf=resident): each GPU also holds them all, whole.
            gpu += params * cfg.precision.value_bytes
        return host, gpu
    if stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        host, gpu = estimate_zero2_model_states_mem_needs(params, ranks, nodes, cpu_offload=to_cpu)
        if to_cpu:  # the 16-bit weights: the gradients, made later, go to the host through the buckets
            return host, gpu
        # At backward's start: the weights, whole, and the partition's master and Adam states.
        weights = cfg.precision.value_bytes * params
        partition = MASTER_AND_ADAM_BYTES * params // cfg.world_size
        return host, weights + partition + zero1_held_grads(cfg, params)
    return 0, zero0_bytes_per_param(cfg) * params


def zero0_bytes_per_param(cfg: Config) -> int:
    """Model-state bytes per parameter under ZeRO-0 at backward's peak (see ZERO0_BYTES_PER_PARAM)."""
    accum = (cfg.deepspeed.get("data_types") or {}).get("grad_accum_dtype")
    if cfg.precision.bf16 and accum in ("fp32", "float32", "float"):
        return ZERO0_BF16_OPTIMIZER_BYTES
    return ZERO0_BYTES_PER_PARAM if cfg.precision.half else ZERO0_FP32_BYTES


def zero1_held_grads(cfg: Config, params: int) -> int:
    """ZeRO-1 at gradient accumulation above 1: DeepSpeed 0.19.8 reduces and frees a gradient during
    backward only when it partitions gradients (ZeRO-2) or at the accumulation boundary
    (`reduce_ready_partitions_and_remove_grads`, stage_1_and_2.py), so between micro-steps each rank
    holds every gradient whole, the full 16-bit (fp32: 32-bit) gradients, beside the partition
    DeepSpeed's estimator counts, and at the boundary another reduce bucket. Measured in a fake world
    of 8, 64 and 512 (1B, accumulation 4 against 1): 2.71 GiB more at each, 2 bytes a parameter and
    one 5e8 bucket (benchmarks/RESULTS.md, fifteenth session)."""
    if cfg.zero.stage != 1 or cfg.trainer.gradient_accumulation_steps == 1:
        return 0
    return cfg.precision.value_bytes * params + bucket_bytes(cfg) // 2


def zero3_live_params(cfg: Config, shape: ModelShape) -> int:
    """Parameters ZeRO-3 holds gathered on a GPU at once, as DeepSpeed 0.19.8's parameter coordinator
    (partitioned_param_coordinator.py) decides. After a module runs, `__params_to_release` keeps its
    weights gathered where they are used again within stage3_max_reuse_distance parameters of the
    trace: at backward's start (the peak) a layer's weights come again twice as far ahead as the layer
    is from the end, so half that distance stays. It also keeps every gathered weight that the prefetch
    scan passed over: that scan runs while fewer than stage3_max_live_parameters are gathered, so what is
    gathered grows to that bound. Whichever keeps more, plus the prefetch in flight (min(the live bound,
    stage3_prefetch_bucket_size)). Measured in fake worlds of 64 (22nd session): the live bound at 1e8
    under the default reuse distance keeps 0.44e9 fewer of the 1B's and 0.53e9 fewer of the 6.7B's,
    where half the distance is 0.5e9. At least the largest layer (the module running); at most the
    model."""
    z = cfg.zero
    prefetch = z.stage3_prefetch_bucket_size
    if prefetch is None:  # HF's "auto", as settings.zero_section derives it
        prefetch = int(0.9 * shape.hidden * shape.hidden)
    in_flight = min(z.stage3_max_live_parameters, prefetch)
    return min(shape.trained, max(shape.largest_layer, zero3_kept_params(z) + in_flight))


def zero3_kept_params(z: ZeroConf) -> int:
    """Parameters ZeRO-3 keeps gathered after their modules ran (zero3_live_params says why): half the
    reuse distance, or the live bound, whichever is more."""
    return max(z.stage3_max_reuse_distance // 2, z.stage3_max_live_parameters)


def buffer_bytes(cfg: Config, shape: ModelShape) -> int:
    """What backward adds at its peak to what the forward left (MemoryPlan.gpu_buffers): the loss's
    gradients at its first step (loss_grad_bytes), or, once those and the logits are freed, ZeRO-1/2's
    reduce buckets in their place (bucket_bytes), whichever is more. ZeRO-3's bucket lives through
    backward whole (ZERO3_BUCKETS); with Liger's cross-entropy (no logits, no loss gradients left for
    backward) ZeRO-1/2's count whole."""
    grads = loss_grad_bytes(cfg, shape)
    if cfg.zero.stage == 3:
        return grads + bucket_bytes(cfg)
    return max(grads, bucket_bytes(cfg) - logit_bytes(cfg, shape))


def bucket_bytes(cfg: Config) -> int:
    """ZeRO's gradient reduce buckets, allocated whole whatever the model's size (contiguous_gradients).
    ZeRO-1/2: two with overlap_comm (one fills while the other is reduced), and two under ZeRO-1 too
    (issue 34's count, kept: at accumulation 1 they hide under the loss's tensors, see buffer_bytes;
    zero1_held_grads takes one at the accumulation boundary), although DeepSpeed allocates it one.
    DeepSpeed allocates them in `setup_buckets`, called from the first gradient hook (stage_1_and_2.py,
    `process_gradients`), after the loss's gradients and the logits have been freed: measured phase by
    phase (benchmarks/RESULTS.md), the 1B's two 5e8 buckets (1.86 GiB) do not show at the peak, the
    loss's gradients (1.47 GiB) do. ZeRO-3: its one bucket (ZERO3_BUCKETS). A bucket left to
    DeepSpeed's "auto" is hidden^2 elements: negligible."""
    z = cfg.zero
    if z.stage == 0 or not z.reduce_bucket_size or not z.contiguous_gradients:
        return 0
    if z.stage == 3:
        return z.reduce_bucket_size * cfg.precision.value_bytes * ZERO3_BUCKETS
    return z.reduce_bucket_size * cfg.precision.value_bytes * (2 if z.overlap_comm or z.stage == 1 else 1)


def _compiled(cfg: Config, saved: float) -> int:
    """torch.compile's share of what eager keeps (COMPILED_FRACTION): the loss runs in the compiled
    forward too (the Trainer passes the labels), so its terms are fused as the layers' are."""
    return int(saved * COMPILED_FRACTION if cfg.compiled else saved)


def logit_bytes(cfg: Config, shape: ModelShape) -> int:
    """What the forward keeps of the loss (LOG_SOFTMAX_BYTES): the logits in their dtype and their fp32
    log-softmax."""
    return _loss_term(cfg, shape, cfg.precision.value_bytes + LOG_SOFTMAX_BYTES)


def loss_grad_bytes(cfg: Config, shape: ModelShape) -> int:
    """The loss's gradients at backward's first step (LOSS_GRAD_FP32_BYTES): the upcast logits' fp32
    gradient and, in 16 bits, its cast to the logits' dtype."""
    cast = cfg.precision.value_bytes if cfg.precision.half else 0
    return _loss_term(cfg, shape, LOSS_GRAD_FP32_BYTES + cast)


def _loss_term(cfg: Config, shape: ModelShape, per_entry: int) -> int:
    """per_entry bytes a token per vocabulary entry of the micro batch; none with Liger's fused
    cross-entropy, which never holds the logits and makes their gradients in the forward."""
    if cfg.trainer.liger_kernel:
        return 0
    return _compiled(cfg, per_entry * cfg.data.seq_len * cfg.trainer.micro_batch_size * shape.vocab)


def activation_bytes(cfg: Config, shape: ModelShape) -> int:
    """What the forward pass saves for backward: every layer's activations and the loss's logits."""
    t = cfg.trainer
    tokens = cfg.data.seq_len * t.micro_batch_size
    fp32_factor = 1 if cfg.precision.half else 2
    layer = shape.activation_bytes * (LIGER_LAYER_FRACTION if t.liger_kernel else 1.0)
    if t.gradient_checkpointing:
        layers = (CHECKPOINTED_BYTES * shape.layers + layer) * tokens * shape.hidden
    else:
        layers = layer * tokens * shape.hidden * shape.layers
    # Liger's fused linear cross-entropy runs the head and the loss chunk by chunk in the forward and
    # keeps only the gradients it made there, the hidden states' and the head weight's (in their dtype):
    # no logits outlive a chunk. Otherwise the logits are logit_bytes'.
    head = cfg.precision.value_bytes * (tokens + shape.vocab) * shape.hidden if t.liger_kernel else 0
    if cfg.precision.fp8 and cfg.compiled:
        layers *= FP8_SAVED_FRACTION[cfg.precision.fp8_recipe]
    if cfg.peft.enabled and cfg.peft.dropout > 0:  # without dropout LoRA saves the inputs the base would
        lora = LORA_DROPOUT_BYTES * shape.adapted_inputs
        if not frozen_inputs_saved(cfg):
            lora -= FROZEN_INPUT_BYTES * shape.frozen_inputs
        layers += lora * tokens * shape.layers
    return _compiled(cfg, layers * fp32_factor + head) + logit_bytes(cfg, shape)


def frozen_inputs_saved(cfg: Config) -> bool:
    """Whether the frozen base's linear layers save their inputs as the full fine-tune's do. ZeRO-3 swaps
    torch.nn.functional.linear for its LinearFunctionForZeroStage3 (DeepSpeed 0.19.8 zero/linear.py, under
    zero_optimization.memory_efficient_linear, on by default), which saves every input, a frozen weight's
    too. QLoRA's 4-bit layers multiply through bitsandbytes instead, which saves none."""
    zero = cfg.deepspeed.get("zero_optimization") or {}
    swapped = cfg.zero.stage == 3 and zero.get("memory_efficient_linear", True)
    return bool(swapped) and not cfg.peft.quantized
