"""The plan of one point: what DeepSpeed and the Trainer get (settings.py, from one source of
truth) and the memory it needs (memory.py), from the composed config and the model's shape (read
from its config, never its weights)."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.plan import memory, settings
from pipeline.plan.memory import MemoryPlan


@dataclass
class Plan:
    deepspeed: dict[str, Any]
    training_args: dict[str, Any]
    world_size: int
    params: int
    flops_per_token: float
    memory: MemoryPlan


def make(cfg: Config, output_dir: Path, use_cpu: bool) -> Plan:
    from pipeline.rank import model, tokenizer  # torch and transformers: once a plan is asked for

    model_cfg = model.model_config(cfg, tokenizer.BYTE_VOCAB)
    params, largest = model.sizes(model_cfg)
    shape = memory.ModelShape(
        params,
        largest,
        model_cfg.hidden_size,
        model_cfg.num_hidden_layers,
        model_cfg.vocab_size,
        layer_saved=model.layer_saved_bytes(model_cfg),
        tied_head=model_cfg.vocab_size * model_cfg.hidden_size
        if getattr(model_cfg, "tie_word_embeddings", False)
        else 0,
    )
    if cfg.peft.enabled:
        from pipeline.rank import adapter  # peft: only where an adapter is asked for

        sized = adapter.sizes(cfg, model_cfg)
        shape = dataclasses.replace(
            shape,
            params=sized.params,
            trainable=sized.trainable,
            quantized=sized.quantized,
            adapted_inputs=sized.adapted_inputs,
            frozen_inputs=sized.frozen_inputs,
        )
    ds = settings.deepspeed_config(cfg, model_cfg.hidden_size, use_cpu)
    return Plan(
        deepspeed=ds,
        training_args=settings.training_args(cfg, ds, output_dir, use_cpu),
        world_size=cfg.world_size,
        params=shape.params,
        flops_per_token=model.flops_per_token(model_cfg, shape.params, cfg.data.seq_len, shape.trainable),
        memory=memory.estimate(cfg, shape),
    )
