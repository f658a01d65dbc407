"""fp8 against bf16 on the loss (issue 35): the 1B trained on the shipped text, both compiled, a few
seeds each, every step's loss read back from MLflow as a user compares runs there.

One step's loss is noisy (each batch is a different slice of the text), so each run is summed up
by its mean loss over windows of --window steps (50 by default: about one pass over the shipped
text at 8 x 1024 tokens, so each window sees all of it once). The two sides of a seed start from the
same weights and see the same batches, so their gap is fp8's numerics; bf16's own spread across
seeds is set beside it.

The 1B memorises the shipped 400 KB in 300 steps (six passes), which amplifies small numeric
differences: bf16's own seeds ended 8.8% apart (RESULTS.md, 21st session). --corpus-mb N trains on
N MB of this Python's standard-library sources instead (byte tokens, like the shipped text): 300
steps of 8 x 1024 read 2.5 MB, so with N >= 3 no block is seen twice.

Runs on the device (device_calls.sh F, and H on Python sources); each run's row and curve are written as it
ends, to <out>/runs.jsonl, and the table to <out>/table.md:
  python benchmarks/fp8_loss.py --out DIR [--seeds 0,1] [--steps 300] [--corpus-mb 8]
"""

import argparse
import json
import statistics
import sys
import sysconfig
from pathlib import Path

from gpu_table import PRESETS, run_pipeline

from pipeline.track.store import RUN_ID_FILE, Store, store_uri

SIDES = {"bf16": "z2+compile_text", "fp8": "z2+fp8_text"}


def stdlib_corpus(path: Path, megabytes: float) -> Path:
    """The running Python's standard-library sources, file by file in name order, cut at megabytes:
    text that is the same wherever the same Python is installed, and needs no download."""
    size, text, stdlib = int(megabytes * 2**20), bytearray(), sysconfig.get_paths()["stdlib"]
    for source in sorted(Path(stdlib).rglob("*.py")):
        text += source.read_bytes()
        if len(text) >= size:
            break
    if len(text) < size:  # a stripped install (.pyc only): the run would repeat the text and memorise it
        raise SystemExit(f"{stdlib} holds {len(text) / 2**20:.1f} MB of sources, not {megabytes}")
    path.write_bytes(text[:size])
    return path


def curve(root: Path, run_dir: Path) -> list[float]:
    """The run's logged loss at every step, from the MLflow store under root (the runs'
    outputs_dir)."""
    store = Store(store_uri(root))
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    return [value for _, value in store.history(run_id, "loss")]


def windows(losses: list[float], width: int) -> list[float]:
    """Mean loss over each whole window of width steps, first to last."""
    return [statistics.fmean(losses[i : i + width]) for i in range(0, len(losses) - width + 1, width)]


def table(rows: list[dict], width: int) -> str:
    """A row per run (its window means); then, for each seed both sides ran, fp8's gap to bf16 window by
    window (the same initial weights and batches: only the numerics differ); then each side's last
    window across seeds, beside bf16's own spread (what the weights and batches of a seed move)."""
    n = max((len(r["windows"]) for r in rows), default=0)
    heads = [f"steps {i * width + 1}-{(i + 1) * width}" for i in range(n)]
    lines = [
        "| side | seed | " + " | ".join(heads) + " | last loss | tokens/s | peak GiB |",
        "|---|---|" + "---|" * (n + 3),
    ]
    for r in rows:
        means = " | ".join(f"{m:.4f}" for m in r["windows"]) + " | -" * (n - len(r["windows"]))
        if "stopped_at" in r:  # cut by its time limit: the whole windows its history holds
            figures = f"stopped at step {r['stopped_at']} | - | -"
        else:
            figures = f"{r['loss_last']:.4f} | {r['tok_s']:,.0f} | {r['peak_gib']:.1f}"
        lines.append(f"| {r['side']} | {r['seed']} | {means} | {figures} |")
    runs = {(r["side"], r["seed"]): r["windows"] for r in rows}
    paired = sorted(seed for side, seed in runs if side == "fp8" and ("bf16", seed) in runs)
    if paired:
        lines.append("")
    for seed in paired:  # over the windows both reached
        gaps = [
            f"{100 * (f / b - 1):+.2f}%" for b, f in zip(runs["bf16", seed], runs["fp8", seed], strict=False)
        ]
        lines.append(f"fp8 against bf16, seed {seed}, window by window: {', '.join(gaps)}")
    whole = [r for r in rows if "stopped_at" not in r and r["windows"]]
    last = {s: [r["windows"][-1] for r in whole if r["side"] == s] for s in SIDES}
    if all(last.values()):
        bf16, fp8 = statistics.fmean(last["bf16"]), statistics.fmean(last["fp8"])
        spread = (max(last["bf16"]) - min(last["bf16"])) / bf16
        gap = 100 * (fp8 / bf16 - 1)
        lines += [
            "",
            f"Last window, mean over seeds: bf16 {bf16:.4f}, fp8 {fp8:.4f}: fp8 {gap:+.2f}%"
            f" (bf16 across its {len(last['bf16'])} seeds: {100 * spread:.2f}% apart)",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--timeout", type=int, default=200, help="most seconds one run may take")
    ap.add_argument("--sides", default=",".join(SIDES), help="bf16, fp8 or both")
    ap.add_argument(
        "--corpus-mb", type=float, default=0, help="train on N MB of Python sources (0: the shipped text)"
    )
    ap.add_argument("overrides", nargs="*", help="pipeline overrides for every run (after the preset's)")
    a = ap.parse_args()
    root = a.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if a.corpus_mb:
        a.overrides.insert(0, f"data.path={stdlib_corpus(root / 'corpus.txt', a.corpus_mb)}")
    for seed in [int(s) for s in a.seeds.split(",")]:
        for side in a.sides.split(","):
            variant, extra = PRESETS[SIDES[side]]
            run_dir = root / f"{side}_seed{seed}"
            # One store for all runs (outputs_dir), which the table reads back and the call returns.
            more = [*extra, f"trainer.seed={seed}", f"outputs_dir={root}", *a.overrides]
            res = run_pipeline(variant, more, run_dir, a.timeout, steps=a.steps, warm=min(20, a.steps // 2))
            # A run cut by its time limit keeps the steps it logged: its whole windows still compare.
            losses = curve(root, run_dir) if (run_dir / RUN_ID_FILE).exists() else []
            if res is None:
                print(f"{side} seed {seed}: failed after {len(losses)} logged steps", flush=True)
                if len(losses) < a.window:
                    continue
                res = {"stopped_at": len(losses)}
            row = {"side": side, "seed": seed, **res, "losses": losses, "windows": windows(losses, a.window)}
            rows.append(row)
            with (root / "runs.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            text = table(rows, a.window)
            (root / "table.md").write_text(f"$ {' '.join(sys.argv)}\n\n{text}")
            print(text, flush=True)


if __name__ == "__main__":
    main()
