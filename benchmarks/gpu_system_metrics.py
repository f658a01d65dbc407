"""Device check: a run trained on the GPU carries MLflow's GPU system metrics (not testable in CI).

Trains the small Llama for a few steps with tracking on (a new sqlite store under --out), then reads
the run back through MLflow's API and prints, per system/ metric, its samples and largest value.
Exits 1 if no system/gpu_* metric was logged (e.g. nvidia-ml-py missing: pip install '.[gpu]').
usage: python benchmarks/gpu_system_metrics.py --out DIR
"""

import argparse
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    run_dir, store = a.out / "run", f"sqlite:///{(a.out / 'mlflow.db').resolve()}"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "model=llama_small",
        "data=random_tokens",
        "precision=bf16",
        f"trainer.max_steps={a.steps}",
        f"tracking.uri={store}",
        f"hydra.run.dir={run_dir}",
    ]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("zerosweep").experiment_id])[
        0
    ]  # the store's only run
    run_id = run.info.run_id
    system = sorted(k for k in run.data.metrics if k.startswith("system/"))
    print(f"run {run_id}: {run.info.status}, {len(system)} system metrics")
    for key in system:
        values = [m.value for m in client.get_metric_history(run_id, key)]
        print(f"  {key}: {len(values)} samples, max {max(values):.1f}")
    if not any(k.startswith("system/gpu_") for k in system):
        sys.exit("no system/gpu_* metric logged")


if __name__ == "__main__":
    main()
