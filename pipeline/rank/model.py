"""The model: a pretrained causal LM (model=hf), or a Llama built from the config (no download);
its size and FLOPs from its config alone, without loading weights."""

import contextlib
import copy
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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


# Tokens a layer's saved tensors are counted at: the count is linear in them (flash attention saves
# no score matrix), so any length gives the per-token figure.
COUNT_TOKENS = 64


def layer_saved_bytes(config: PretrainedConfig) -> float:
    """Bytes one decoder layer's forward keeps for its backward, per token and hidden unit, in bf16 with
    flash attention (what a GPU run keeps): the model with 2 layers and with 1 run on the meta device (no
    memory), each saved tensor counted once (a view with its base), weights left out. 0 where the
    architecture cannot run on the meta device. The 1B Llama keeps 45.8; GPT-2, with its 4h GELU MLP and
    dropout masks, 64.1. Counted once per model config (a sweep plans many points of one model)."""
    key = f"{type(config).__name__} {config.to_json_string()}"
    if key not in _COUNTED:
        try:
            one, two = _saved_bytes(config, 1), _saved_bytes(config, 2)
            _COUNTED[key] = (two - one) / COUNT_TOKENS / config.hidden_size
        except Exception:  # noqa: BLE001 (any architecture's failure on meta tensors)
            _COUNTED[key] = 0.0
    return _COUNTED[key]


_COUNTED: dict[str, float] = {}


def _saved_bytes(config: PretrainedConfig, layers: int) -> int:
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    with torch.device("meta"):
        net = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).to(torch.bfloat16).train()
    weights = {id(p) for p in net.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in weights:
            kept[id(base)] = base.numel() * base.element_size()
        return t

    with (
        torch.device("meta"),
        _flash_attention(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        out = net(input_ids=torch.zeros(1, COUNT_TOKENS, dtype=torch.long))
        del out  # kept's tensors lived while it held the graph: no id was reused
    return sum(kept.values())


@contextlib.contextmanager
def _flash_attention() -> Iterator[None]:
    """SDPA as flash attention, whose backward keeps q, k, v, the output and its logsumexp: on the meta
    device SDPA takes its math path, which keeps the score matrix a GPU run does not."""

    def flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            k, v = (x.repeat_interleave(q.shape[-3] // x.shape[-3], -3) for x in (k, v))
        causal = is_causal or attn_mask is None
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, causal, scale=scale)[0]

    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = flash
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


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
