"""LoRA and QLoRA (peft=lora|qlora) through the peft library: the adapter's config, the base it goes
on (the pretrained model, or a built one saved once to <run dir>/base/ so that the adapter can be
loaded on it again), the model wrapped with it, its sizes counted on the meta device for the plan,
and the merged model. bitsandbytes is imported only under qlora (by transformers, on loading)."""

import os
from pathlib import Path
from typing import NamedTuple

import torch
from filelock import FileLock
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from transformers.pytorch_utils import Conv1D

from pipeline.config import Config, ModelSource
from pipeline.errors import ConfigError

# peft's own name for every linear layer of the architecture but the output layer.
ALL_LINEAR = "all-linear"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def lora_config(cfg: Config) -> LoraConfig:
    p = cfg.peft
    return LoraConfig(
        r=p.r,
        lora_alpha=p.alpha,
        lora_dropout=p.dropout,
        target_modules=list(p.target_modules) if p.target_modules is not None else ALL_LINEAR,
        modules_to_save=list(p.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def compute_dtype(cfg: Config) -> torch.dtype:
    return DTYPES[cfg.precision.dtype.value]


def quantization(cfg: Config) -> BitsAndBytesConfig:
    """QLoRA's 4-bit base. Under ZeRO-3 the packed 4-bit weights are stored in the compute dtype:
    ZeRO-3 partitions (and casts) parameters of that dtype, and would break uint8 storage."""
    dtype = compute_dtype(cfg)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.peft.quant_type,
        bnb_4bit_use_double_quant=cfg.peft.double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype if cfg.zero.stage == 3 else torch.uint8,
    )


class Sizes(NamedTuple):
    """What the memory plan and the FLOPs need of a model with its adapter."""

    params: int  # with the adapter
    trainable: int  # the adapter and modules_to_save
    quantized: int  # base weights QLoRA stores in 4 bits
    adapted_inputs: int  # the adapted layers' input features, per layer of the model
    frozen_inputs: int  # the base's linear inputs a full fine-tune would save, per layer (see below)


def sizes(cfg: Config, config: PretrainedConfig) -> Sizes:
    """Counted on the meta device: no memory. A target module the model does not have is refused by
    name, with the linear layers it does have."""
    from peft.tuners.lora import LoraLayer

    with torch.device("meta"):
        net = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
        _check_targets(cfg, net, config.model_type)
        quantized = _quantized(net) if cfg.peft.quantized else 0
        wrapped = get_peft_model(net, lora_config(cfg))
    trainable, total = wrapped.get_nb_trainable_parameters()
    inputs = sum(m.in_features for m in wrapped.modules() if isinstance(m, LoraLayer))
    layers = config.num_hidden_layers
    return Sizes(total, trainable, quantized, inputs // layers, _frozen_inputs(wrapped) // layers)


def _frozen_inputs(net: torch.nn.Module) -> int:
    """A full fine-tune saves each linear layer's input for its weight's gradient; a frozen base saves
    none (LoRA's dropout keeps copies of its own). Layers fed the same tensor (q, k, v; gate, up) save
    it once, so the inputs are told apart by a forward on the meta device. Attention saves its own
    output, the output projection's input, either way: one hidden size a layer is not counted. 0 where
    the architecture cannot run on the meta device: the plan is then the larger."""
    out = net.get_output_embeddings()
    seen: dict[int, tuple[torch.Tensor, int]] = {}  # the tensors kept: no id is reused

    def note(module: torch.nn.Module, args: tuple) -> None:
        seen.setdefault(id(args[0]), (args[0], args[0].shape[-1]))

    linears = [
        m
        for name, m in net.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not out and ".lora_" not in name  # the base's
    ]
    hooks = [m.register_forward_pre_hook(note) for m in linears]
    try:
        with torch.device("meta"), torch.no_grad():
            net(input_ids=torch.zeros(1, 2, dtype=torch.long))
    except Exception:  # noqa: BLE001 (any architecture's failure on meta tensors)
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    attention_outputs = net.config.hidden_size * net.config.num_hidden_layers
    return max(0, sum(features for _, features in seen.values()) - attention_outputs)


def _check_targets(cfg: Config, net: torch.nn.Module, model_type: str) -> None:
    """Each of peft.target_modules must name a module of the model, as peft matches them (a full name or
    its last parts): peft itself refuses only a list that matches nothing, and trains a misspelt name's
    layers frozen without a word."""
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [name for name, _ in net.named_modules()]
    for target in cfg.peft.target_modules or []:
        one = LoraConfig(target_modules=[target])
        if not any(check_target_module_exists(one, name) for name in names):
            layers = ", ".join(sorted(linear_names(net)))
            raise ConfigError(
                "peft.target_modules",
                f"{model_type} has no module named {target}",
                f"use some of its linear layers ({layers}), or leave it unset for all of them",
            )


def linear_names(net: torch.nn.Module) -> set[str]:
    """The last name of each linear layer (GPT-2's are Conv1D), the output layer left out."""
    out = net.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, m in net.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not out
    }


def _quantized(net: torch.nn.Module) -> int:
    """Weights bitsandbytes quantizes: every linear layer's but the output layer's (transformers keeps
    lm_head in the compute dtype)."""
    out = net.get_output_embeddings()
    return sum(
        m.weight.numel() for m in net.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not out
    )


def base_path(cfg: Config, out: Path, arch: PretrainedConfig) -> str:
    """Where the frozen base is read from: the pretrained model, or the built one (the config's sizes
    and seed) saved once to <run dir>/base/, where each rank loads it and the adapter finds it again."""
    if cfg.model.source == ModelSource.pretrained:
        path = Path(cfg.model.name_or_path)
        return str(path.absolute()) if path.exists() else cfg.model.name_or_path
    from pipeline.rank import model, tokenizer

    base = out / "base"
    with FileLock(f"{base}.lock"):  # ranks of one node, or of several sharing the run dir
        if not (base / "config.json").is_file():
            unset_hf_deepspeed_config()  # built whole, as without an adapter (not partitioned)
            model.build(cfg, arch).save_pretrained(base)
            tokenizer.load(cfg).save_pretrained(base)
    return str(base)


def load(cfg: Config, base: str) -> PeftModel:
    """The base (fp32 weights for DeepSpeed to cast, as without an adapter; QLoRA's in 4 bits) with a
    new adapter, its initial weights from the seed alone: the same on every stage and rank."""
    if cfg.peft.quantized:
        from peft import prepare_model_for_kbit_training

        # bitsandbytes quantizes as the weights reach the GPU: this rank's, unless ZeRO-3 places them.
        place = None if cfg.zero.stage == 3 else {"": int(os.environ.get("LOCAL_RANK", "0"))}
        net = AutoModelForCausalLM.from_pretrained(
            base, quantization_config=quantization(cfg), dtype=compute_dtype(cfg), device_map=place
        )
        net = prepare_model_for_kbit_training(net, cfg.trainer.gradient_checkpointing)
    else:
        net = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(cfg.trainer.seed)
    net = get_peft_model(net, lora_config(cfg))
    if cfg.zero.stage == 3 and not cfg.peft.quantized:
        # DeepSpeed casts a ZeRO-0/1/2 module to the training dtype whole, but under ZeRO-3 only what
        # zero.Init made: the base. The adapter, made after it, would train in fp32, and PEFT casts each
        # adapted input to it, saving it in fp32 (the 1B with r=16: 6.7 GiB more than on ZeRO-2).
        for p in net.parameters():
            if p.requires_grad:
                p.data = p.data.to(compute_dtype(cfg))
    return net


def merge(adapter_dir: Path, model_dir: Path, dtype: torch.dtype) -> None:
    """The base with the adapter merged into it (peft's merge_and_unload), as a plain model directory.
    The base is read again whole, unquantized, in the training dtype: not the training's partitions."""
    unset_hf_deepspeed_config()  # a live ZeRO-3 config would make from_pretrained partition it
    merged = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, dtype=dtype).merge_and_unload()
    merged.save_pretrained(model_dir)


def reload(path: Path) -> PreTrainedModel:
    """An adapter dir as a model: its base (adapter_config.json's base_model_name_or_path) with it."""
    return AutoPeftModelForCausalLM.from_pretrained(path)
