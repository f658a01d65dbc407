"""The model: a Llama built from the config (no hub download), and its size without building it."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.config import ModelConf


def llama_config(model: ModelConf, vocab_size: int, seq_len: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=model.vocab_size or vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_hidden_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_key_value_heads or model.num_attention_heads,
        max_position_embeddings=seq_len,
        tie_word_embeddings=model.tie_word_embeddings,
        attn_implementation=model.attn_implementation,
    )


def sizes(config: LlamaConfig) -> tuple[int, int]:
    """(total parameters, largest layer's parameters), counted on the meta device: no memory."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def build(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """Under ZeRO-3 the Trainer's DeepSpeed config is live here, so HF partitions at init."""
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(config)


def flops_per_token(config: LlamaConfig, params: int, seq_len: int) -> float:
    """Model FLOPs per trained token, the reference's formula: 6 N + 12 L h s."""
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq_len
