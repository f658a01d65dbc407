"""DeepSpeed's own autotuner on the model search=fastest is measured on (issue 17), for the table
beside benchmarks/search_vs_grid.py's: its experiments, wall time and best result.

Writes the DeepSpeed config the autotuner starts from (every ZeRO stage, the same global batch,
bf16, DeepSpeed AdamW, the HF Trainer's "auto" values) and runs
`deepspeed --autotuning tune --num_gpus N benchmarks/autotune_train.py --deepspeed ...`. The
autotuner imports mlflow when it is installed and then needs MLFLOW_RUN_ID: it gets a run of its
own in the store under --out. Each experiment's metrics.json holds the engine's forward + backward
+ step time (latency, ms; no data loading), turned here into tokens/s and model-TFLOP/s with the
pipeline's FLOPs formula.
usage: python benchmarks/autotuner.py --out DIR [--gpus 1] [--model llama_1b] [--timeout 540]
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
from deepspeed.autotuning.utils import search_error

from pipeline.check import compose
from pipeline.rank import model, tokenizer

ROOT = Path(__file__).resolve().parents[1]
ARG_MAPPINGS = {
    "train_micro_batch_size_per_gpu": "--per_device_train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
}


def ds_config(out: Path, global_batch: int, fast: bool) -> dict:
    return {
        "bf16": {"enabled": "auto"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": "all"},
        "autotuning": {
            "enabled": True,
            "fast": fast,
            "max_train_batch_size": global_batch,
            "arg_mappings": ARG_MAPPINGS,
            "results_dir": str(out / "results"),
            "exps_dir": str(out / "exps"),
        },
    }


def experiments(results: Path, seq: int, flops_per_token: float) -> list[dict]:
    """Every experiment the autotuner ran, in the order it wrote them: its config and, where it
    trained, tokens/s and model-TFLOP/s."""
    rows = []
    for exp_json in sorted(results.glob("*/exp.json"), key=lambda p: p.stat().st_mtime):
        exp = json.loads(exp_json.read_text())
        ds = exp["ds_config"]
        row = {
            "name": exp["name"],
            "stage": ds.get("zero_optimization", {}).get("stage"),
            "mbs": ds.get("train_micro_batch_size_per_gpu"),
            "gas": ds.get("gradient_accumulation_steps"),
            "batch": ds.get("train_batch_size"),
        }
        # The autotuner counts an experiment as failed when any stderr line holds "error"
        # (a library's warning too); say which line, as it prints none.
        row["error"] = search_error(str(exp_json.parent / "stderr.log"))
        metrics = exp_json.parent / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            tokens_s = row["batch"] * seq / (m["latency"] / 1e6)  # latency: microseconds a step
            row.update(tokens_s=tokens_s, tflops=tokens_s * flops_per_token / 1e12)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--model", default="llama_1b")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--precision", default="--bf16", help="the Trainer flag: --bf16, or '' for fp32 (CPU)")
    ap.add_argument("--fast", action="store_true", help="the autotuner's fast mode: micro batch only")
    ap.add_argument("--timeout", type=int, default=540)
    a = ap.parse_args()
    out = a.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    config = out / "ds_autotune.json"
    config.write_text(json.dumps(ds_config(out, a.global_batch, a.fast), indent=1))
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    run_id = mlflow.start_run(run_name="deepspeed autotuner").info.run_id
    mlflow.end_run()
    cfg = compose.compose_point([f"model={a.model}", f"data.seq_len={a.seq}"])
    arch = model.model_config(cfg, tokenizer.BYTE_VOCAB)
    params = model.build(cfg, arch).num_parameters()
    per_token = model.flops_per_token(arch, params, a.seq)

    cmd = ["deepspeed", "--autotuning", "tune", "--num_gpus", str(a.gpus), "benchmarks/autotune_train.py"]
    cmd += ["--deepspeed", str(config), "--output_dir", str(out / "trainer"), *a.precision.split()]
    cmd += [
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        str(a.global_batch // a.gpus),
    ]
    cmd += ["--max_steps", "10", "--learning_rate", "3e-4", "--save_strategy", "no", "--report_to", "none"]
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db"}
    paths = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # the device's wheels
    env |= {"ZEROSWEEP_MODEL": a.model, "ZEROSWEEP_SEQ": str(a.seq), "PYTHONPATH": paths}
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, timeout=a.timeout)
        how = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        how = f"cut off after {a.timeout} s"
    wall = time.perf_counter() - t0

    rows = experiments(out / "results", a.seq, per_token)
    lines = [f"DeepSpeed autotuner ({how}): {len(rows)} experiments, {wall:.0f} s wall", ""]
    head = "| # | experiment | ZeRO | mbs x gas | global batch | tokens/s | model TFLOP/s |"
    lines += [head, "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, start=1):
        # The first experiment profiles the model (its size, for the memory estimates), no timed step.
        missing = "model profile | " if r["name"] == "profile_model_info" else "no result (cut off?) | "
        if r["error"]:
            missing = f"read as failed: {r['error'].strip()[:100]} | "
        speed = f"{r['tokens_s']:,.0f} | {r['tflops']:.2f}" if "tflops" in r else missing
        lines.append(
            f"| {i} | {r['name']} | {r['stage']} | {r['mbs']} x {r['gas']} | {r['batch']} | {speed} |"
        )
    lines.append("")
    # The autotuner ranks by samples/s whatever the global batch; the search keeps the user's.
    at_batch = [r for r in rows if r["batch"] == a.global_batch]
    for what, pool in (("any global batch", rows), (f"global batch {a.global_batch}", at_batch)):
        best = max((r for r in pool if "tflops" in r), key=lambda r: r["tflops"], default=None)
        said = f"{best['name']}, {best['tflops']:.2f} model-TFLOP/s" if best else "none trained"
        lines.append(f"best at {what}: {said}")
    text = "\n".join(lines) + "\n"
    (out / "autotuner.md").write_text(f"    {' '.join(cmd)}\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
