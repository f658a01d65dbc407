"""search=fastest against a grid over the same space, on the machine it runs on (issue 17).

Runs the search as a user would (the 1B Llama at a global batch of 32 sequences of 1024 on one
GPU by default), then reads its trials from MLflow in the order they started and prints, as
Markdown: each trial's outcome and wall time, the best model-TFLOP/s so far, how many trials and
how much wall time it took to reach --fraction of --best-known, and what a grid over the same
space would cost: the points the memory plan lets start (a plain grid would also start the rest),
each trained as long as a finished trial was (no pruning), i.e. a lower bound.
usage: python benchmarks/search_vs_grid.py --out DIR [--best-known 479] [--setting '...'] [overrides ...]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline import track
from pipeline.sweep.search.driver import Search
from pipeline.track import PRUNED, SEARCH, SEARCH_POINT

ROOT = Path(__file__).resolve().parents[1]
# The setting: the 1B Llama, seq 1024, bf16, DeepSpeed AdamW, 8 x 4 = 32 sequences a step.
SETTING = "model=llama_1b data=random_tokens precision=bf16 optimizer=adamw"
SETTING += " trainer.micro_batch_size=8 trainer.gradient_accumulation_steps=4"


def trials_in_order(uri: str) -> tuple[list[dict], str]:
    """The newest search's trials, oldest first: state, point, model TFLOP/s, wall seconds."""
    store = track.Store(uri)
    experiment = store.experiment_id("zerosweep")
    (parent, *_) = store.search(experiment, f"tags.`{SEARCH}` = 'fastest'", newest_first=True, limit=1)
    rows = []
    for run in store.children(experiment, parent.run_id):
        if SEARCH_POINT not in run.tags:
            continue
        m = run.metrics
        rows.append(
            {
                "name": run.name,
                "state": "PRUNED" if PRUNED in run.tags else run.state.value,
                "tflops": m.get("model_tflops"),
                "wall_s": m.get("search_wall_s", 0.0),
            }
        )
    return rows, parent.run_id


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--best-known", type=float, default=479.0, help="model-TFLOP/s of the best config known")
    ap.add_argument("--fraction", type=float, default=0.95)
    ap.add_argument("--timeout", type=int, default=540)
    ap.add_argument("--setting", default=SETTING, help="the model, data and batch the search is for")
    ap.add_argument("extra", nargs="*", help="overrides after the issue's setting (search.trials=12, ...)")
    a = ap.parse_args()
    outputs = (a.out / "outputs").absolute()
    overrides = ["search=fastest", *a.setting.split(), f"outputs_dir={outputs}", *a.extra]
    cmd = [sys.executable, "-m", "pipeline", *overrides]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, cwd=ROOT, timeout=a.timeout)
    except subprocess.TimeoutExpired:  # the search closes its parent on SIGTERM; a rerun carries on
        print(f"search cut off after {a.timeout} s", flush=True)
    search_wall = time.perf_counter() - t0
    rows, parent = trials_in_order(f"sqlite:///{outputs}/mlflow.db")

    lines = [f"search=fastest, MLflow parent run {parent}: {search_wall:.0f} s wall in all", ""]
    lines += ["| trial | point | state | model TFLOP/s | wall s | best so far |", "|---|---|---|---|---|---|"]
    best, reached = 0.0, None
    for i, r in enumerate(rows, start=1):
        if r["state"] == "FINISHED" and r["tflops"]:
            best = max(best, r["tflops"])
        if reached is None and best >= a.fraction * a.best_known:
            reached = (i, sum(x["wall_s"] for x in rows[:i]))
        tflops = f"{r['tflops']:.1f}" if r["tflops"] else ""
        lines.append(f"| {i} | {r['name']} | {r['state']} | {tflops} | {r['wall_s']:.0f} | {best:.1f} |")
    goal = f"{a.fraction:.0%} of {a.best_known:g} model-TFLOP/s"
    lines += [
        "",
        f"reached {goal} at trial {reached[0]}, {reached[1]:.0f} s of trial wall time"
        if reached
        else f"did not reach {goal} (best {best:.1f})",
    ]

    search = Search.checked(overrides, multirun=False)
    fitting = sum(1 for _ in search.fitting())
    finished = [r["wall_s"] for r in rows if r["state"] == "FINISHED"]
    if finished:
        grid = fitting * statistics.mean(finished)
        lines.append(
            f"grid over the same space: {search.space.size} points, {fitting} that the plan lets start; "
            f"at the finished trials' mean {statistics.mean(finished):.0f} s each, >= {grid:.0f} s"
        )
    text = "\n".join(lines) + "\n"
    (a.out / "search_vs_grid.md").write_text(f"    {' '.join(cmd)}\n\n{text}")
    (a.out / "search_vs_grid.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
