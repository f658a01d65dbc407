"""Does the HF path (model=hf) cost anything? The 1B Llama saved as a model directory and trained
through `model=hf model.name_or_path=DIR`, against `model=llama_1b` built from its config: the
same settings as gpu_table.py (random tokens, seq 1024, bf16, micro batch 8, DeepSpeed AdamW, 30
steps, steps 10..30 timed), MLflow tracking on as users run it, ABBA pairs in one call.

usage: python benchmarks/hf_path.py --out DIR [--pairs 3] [--variant z2] [--timeout 200]
Writes DIR/table.md after every run (a call cut off keeps what it measured).
"""

import argparse
from pathlib import Path

import gpu_table
import torch

from pipeline.check import compose
from pipeline.rank import model, tokenizer


def save_1b(path: Path) -> None:
    """The pipeline's own llama_1b, initialised as model=llama_1b initialises it (same seed), saved
    with save_pretrained beside a tokenizer (random tokens do not use it; model=hf wants one)."""
    cfg = compose.compose_point(["model=llama_1b", "data=random_tokens"])
    net = model.build(cfg, model.model_config(cfg, tokenizer.BYTE_VOCAB))
    net.save_pretrained(path)
    tokenizer.byte_level().save_pretrained(path)
    del net
    torch.cuda.empty_cache()


def cells(r: dict | None) -> str:
    if r is None:
        return "failed | | | | | "
    figures = f"{r['step_s']:.4f} | {r['tok_s']:,.0f} | {r['tflops']:.1f} | {r['peak_gib']:.1f}"
    return f"{figures} | {r['loss_last']:.4f} | {r['wall_s']:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--variant", default="z2", choices=list(gpu_table.SAME))
    ap.add_argument("--timeout", type=int, default=200)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    saved = Path("/tmp/llama_1b_hf")
    save_1b(saved)
    ways = {"built": ["model=llama_1b"], "hf": ["model=hf", f"model.name_or_path={saved}"]}
    lines = [
        "| pair | path | s/step | tokens/s | model TFLOP/s | peak GiB | last loss | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    runs: dict[str, list] = {w: [] for w in ways}
    for i in range(1, a.pairs + 1):
        for way in ("built", "hf") if i % 2 else ("hf", "built"):
            r = gpu_table.run_pipeline(
                a.variant, [], a.out / f"{way}_{i}", a.timeout, model=ways[way], tracking=True
            )
            runs[way].append(r)
            lines.append(f"| {i} | {way} | {cells(r)} |")
            (a.out / "table.md").write_text("\n".join(lines) + "\n")
            print(lines[-1], flush=True)
    if all(runs["built"]) and all(runs["hf"]):
        built, hf = (sum(r["step_s"] for r in runs[w]) / len(runs[w]) for w in ("built", "hf"))
        lines.append(
            f"\npooled s/step: built {built:.4f}, hf {hf:.4f}; hf / built throughput {built / hf:.3f}"
        )
    print("\n".join(lines))
    (a.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
