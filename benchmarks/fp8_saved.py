"""What one Llama layer keeps for its backward under torch.compile, in bf16 and with torchao's float8
linears, per token and hidden unit (issue 35: the memory plan's memory.FP8_SAVED_FRACTION). Runs on CPU:
Inductor compiles the model as on a GPU, float8 is torchao's emulation (same casts, the matmuls in bf16),
and the compiled graph's partitioner decides what is saved as it would on a GPU. Counted as
model.layer_saved_bytes counts eager: a saved-tensors hook, each storage once, weights left out, the model
with 2 layers less the model with 1.
usage: python benchmarks/fp8_saved.py [--out benchmarks/fp8_saved.json]
"""

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torchao.float8 import Float8LinearConfig, convert_to_float8_training
from transformers import LlamaConfig, LlamaForCausalLM

TOKENS, HIDDEN = 512, 256
# The 1B Llama's proportions (intermediate 2.75 x hidden), small enough to compile on two cores.
SHAPE = dict(hidden_size=HIDDEN, intermediate_size=704, num_attention_heads=4, num_key_value_heads=4)


def saved_bytes(layers: int, recipe: str | None, compiled: bool) -> int:
    """Bytes the forward saves for backward (after a first step has compiled the graphs)."""
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, num_hidden_layers=layers, vocab_size=512, max_position_embeddings=TOKENS)
    net = LlamaForCausalLM(config).to(torch.bfloat16).train()
    if recipe:
        fp8 = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=True)
        head = net.get_output_embeddings()
        convert_to_float8_training(
            net, module_filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and m is not head, config=fp8
        )
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    run = torch.compile(net) if compiled else net
    ids = torch.randint(0, config.vocab_size, (1, TOKENS))
    run(input_ids=ids, labels=ids).loss.backward()
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run(input_ids=ids, labels=ids)
    del out  # the storages lived while it held the graph: no pointer was reused
    return sum(kept.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/fp8_saved.json"))
    args = parser.parse_args()
    rows = []
    for recipe, compiled in [
        (None, False),
        (None, True),
        ("tensorwise", True),
        ("rowwise", True),
        ("rowwise_with_gw_hp", True),
    ]:
        start = time.monotonic()
        per = (saved_bytes(2, recipe, compiled) - saved_bytes(1, recipe, compiled)) / TOKENS / HIDDEN
        rows.append({"float8": recipe or "off (bf16)", "compiled": compiled, "bytes": round(per, 2)})
        print(rows[-1], f"{time.monotonic() - start:.0f} s", flush=True)
    bf16 = next(r["bytes"] for r in rows if r["compiled"] and r["float8"].startswith("off"))
    for r in rows:
        r["of_compiled_bf16"] = round(r["bytes"] / bf16, 3)
    command = shlex.join(["python", *sys.argv])
    args.out.write_text(
        json.dumps({"command": command, "torch": torch.__version__, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
