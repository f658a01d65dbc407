"""The model: a pretrained causal LM (model=hf), or a Llama built from the config (no download);
its size and FLOPs from its config alone, without loading weights."""

import dataclasses

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from pipeline.config import Architecture, Config, ModelSource


def model_config(cfg: Config, vocab_size: int) -> PretrainedConfig:
    """The pretrained model's own config, or a LlamaConfig from the model group's sizes."""
    m = cfg.model
    if m.source == ModelSource.pretrained:
        return AutoConfig.from_pretrained(m.name_or_path)
    if m.architecture == Architecture.gpt2:
        return gpt2_config(cfg, vocab_size)
    return LlamaConfig(
        vocab_size=m.vocab_size or vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads or m.num_attention_heads,
        max_position_embeddings=cfg.data.seq_len,
        tie_word_embeddings=m.tie_word_embeddings,
        attn_implementation=m.attn_implementation,
        head_dim=m.head_dim,
    )


def gpt2_config(cfg: Config, vocab_size: int) -> PretrainedConfig:
    """model.architecture=gpt2: GPT-2's blocks (learned positions, one per token of data.seq_len)."""
    from transformers import GPT2Config

    m = cfg.model
    return GPT2Config(
        vocab_size=m.vocab_size or vocab_size,
        n_embd=m.hidden_size,
        n_inner=m.intermediate_size,
        n_layer=m.num_hidden_layers,
        n_head=m.num_attention_heads,
        n_positions=cfg.data.seq_len,
        tie_word_embeddings=m.tie_word_embeddings,
        attn_implementation=m.attn_implementation,
    )


def sizes(config: PretrainedConfig) -> tuple[int, int]:
    """(total parameters, largest layer's parameters), counted on the meta device: no memory. The
    class itself, not from_config: a ZeRO-3 config an earlier point of a local sweep left live
    would make from_config partition (zero.Init), which meta tensors cannot."""
    with torch.device("meta"):
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def build(cfg: Config, config: PretrainedConfig) -> PreTrainedModel:
    """Under ZeRO-3 the Trainer's DeepSpeed config is live here when its TrainingArguments exist:
    HF then partitions at init (zero.Init), and from_pretrained loads each rank's share only."""
    torch.manual_seed(cfg.trainer.seed)
    if cfg.model.source == ModelSource.pretrained:
        # fp32 master weights, as for a built model: DeepSpeed casts to bf16/fp16 itself.
        return AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.float32)
    return AutoModelForCausalLM.from_config(config)


def to_float8(net: PreTrainedModel, cfg: Config) -> int:
    """precision=fp8: torchao swaps each linear layer for its float8 one, in place, and returns how
    many. The output head stays bf16 (the logits' precision matters most, and a tied head is the
    embedding), as does any layer whose sizes float8 matmuls cannot take (multiples of 16)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(cfg.precision.fp8_recipe)
    config = dataclasses.replace(config, emulate=cfg.precision.fp8_emulate)
    head = net.get_output_embeddings()

    def wanted(module: torch.nn.Module, _name: str) -> bool:
        return (
            isinstance(module, torch.nn.Linear)
            and module is not head
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )

    before = sum(isinstance(m, torch.nn.Linear) for m in net.modules())
    convert_to_float8_training(net, module_filter_fn=wanted, config=config)
    return before - sum(type(m) is torch.nn.Linear for m in net.modules())


def flops_per_token(
    config: PretrainedConfig, params: int, seq_len: int, trainable: int | None = None
) -> float:
    """Model FLOPs per trained token, the reference's formula: 6 N + 12 L h s. With an adapter (trainable
    of the params), the frozen weights take no weight gradient: 2 N forward, 2 N for the input
    gradients, 2 T for the trainable weights' gradients."""
    weights = 6 * params if trainable is None else 4 * params + 2 * trainable
    return weights + 12 * config.num_hidden_layers * config.hidden_size * seq_len
