"""What per-step MLflow logging costs the training process, on this machine (no GPU needed).

Logs the pipeline's per-step metrics (5 values, one step every --step-ms) through the same
MetricLogger rank 0 uses, into a fresh sqlite store, and prints the process CPU time spent per
step (the step itself only sleeps): with tracking.buffer_s=0 (one write a step) and with the
default. That CPU time is Python on MLflow's logging thread, taken from the interpreter the
training step needs too (benchmarks/RESULTS.md, eighth session).
With --train "OVERRIDES", it trains that point instead, --repeat times each with a write a step
(tracking.buffer_s=0), with the default buffer and with tracking off, rotating who goes first, and
prints each side's mean step time (summary.json) and its ratio to tracking off.
With --sampler, it measures what the system-metrics sampler takes from the training process's
main thread: the share of time a tight Python loop stood still (gaps above 200 us) with no
sampler, with MLflow's sampler as a thread of this process, and with the pipeline's (a process of
its own), --repeat rounds of --seconds each. With --logger, the same share with no logging and
with rank 0's MetricLogger logging a step every 0.3 s at the default buffer (its writes included).
usage: python benchmarks/tracking_cost.py [--steps 100] [--step-ms 50] [--buffer-s 0,10]
       python benchmarks/tracking_cost.py --train "model=llama_tiny zero=stage3 offload=cpu" [--repeat 3]
       python benchmarks/tracking_cost.py --sampler [--repeat 3] [--seconds 10]
       python benchmarks/tracking_cost.py --logger [--repeat 3] [--seconds 25]
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from pipeline.config import TrackingConf
from pipeline.track.runs import MetricLogger, RunRef
from pipeline.track.sampler import Sampler
from pipeline.track.store import Store

ROOT = Path(__file__).resolve().parents[1]

VALUES = ("loss", "grad_norm", "learning_rate", "step_time_s", "tokens_per_s")  # what rank 0 logs a step
STEP_S = 0.3  # one-GPU ZeRO-3's step time on the device: the pace --logger logs at


def new_run(db: Path, name: str) -> tuple[str, Store, str]:
    """A fresh sqlite store at db with one run: (its URI, the store, the run's id)."""
    uri = f"sqlite:///{db}"
    store = Store(uri)
    return uri, store, store.create_run(store.create_experiment(name, None), name, {}, {})


def cost(buffer_s: int, steps: int, step_ms: float, store_dir: Path) -> float:
    """CPU milliseconds per step of logging `steps` steps with this buffer, all of it flushed."""
    uri, store, run_id = new_run(store_dir / f"mlflow_{buffer_s}.db", f"buffer_s={buffer_s}")
    logger = MetricLogger(RunRef(uri, run_id), buffer_s)
    cpu0 = time.process_time()
    for step in range(1, steps + 1):
        time.sleep(step_ms / 1000)
        logger({k: float(step) for k in VALUES}, step)
    logger.flush()
    spent = time.process_time() - cpu0
    assert len(store.history(run_id, "loss")) == steps  # nothing lost
    return 1000 * spent / steps


SIDES = {"buffer_s=0": ["tracking.buffer_s=0"], "buffer_s=10": [], "tracking off": ["tracking.enabled=false"]}


def train(overrides: str, repeat: int, steps: int, store_dir: Path) -> None:
    """The point trained with each side of SIDES, rotating; mean step time per side."""
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    sides = list(SIDES)
    for i in range(repeat):
        for side in sides[i % 3 :] + sides[: i % 3]:
            out = store_dir / f"{side}_{i}".replace(" ", "_")
            cmd = [sys.executable, "-m", "pipeline", *overrides.split(), *SIDES[side]]
            cmd += [f"trainer.max_steps={steps}", "trainer.save_model=false", f"hydra.run.dir={out}"]
            cmd += [f"outputs_dir={store_dir}"]
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            times[side].append(json.loads((out / "summary.json").read_text())["avg_step_time_s"])
            print(f"{side}: {1000 * times[side][-1]:.1f} ms/step", flush=True)
    off = statistics.mean(times["tracking off"])
    for side, values in times.items():
        mean = statistics.mean(values)
        ratio = f"throughput / tracking off {off / mean:.3f}"
        print(f"{side}: mean {1000 * mean:.1f} ms/step over {len(values)}, {ratio}")


def stood_still(seconds: float, step: Callable[[int], None] | None = None, step_s: float = STEP_S) -> float:
    """The share of `seconds` in which this thread's tight loop did not run for over 200 us; with
    step, the loop calls it every step_s (its own time left out), as a training step logs."""
    t0 = last = time.perf_counter()
    lost, due, n = 0.0, t0 + step_s, 0
    while last - t0 < seconds:
        now = time.perf_counter()
        if now - last > 200e-6:
            lost += now - last
        last = now
        if step and now >= due:
            n, due = n + 1, due + step_s
            step(n)
            last = time.perf_counter()
    return lost / seconds


def report(lost: dict[str, list[float]]) -> None:
    """Each side's mean share of time the main thread stood still, and its rounds'."""
    for side, shares in lost.items():
        each = ", ".join(f"{100 * x:.2f}" for x in shares)
        print(f"{side}: main thread stood still {100 * statistics.mean(shares):.2f}% of the time ({each})")


def sampler(repeat: int, seconds: float, store_dir: Path) -> None:
    """The main thread's lost share with no sampler, MLflow's as a thread, and the pipeline's."""
    uri, _, run_id = new_run(store_dir / "mlflow.db", "sampler")
    sides = {
        "no sampler": None,
        "MLflow's sampler, a thread of this process": lambda: SystemMetricsMonitor(
            run_id, sampling_interval=2, tracking_uri=uri
        ),
        "the pipeline's sampler, a process of its own": lambda: Sampler(run_id, uri, 2),
    }
    lost: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeat):
        for side, make in sides.items():
            running = make() if make else None
            if running:
                running.start()
                time.sleep(4)  # its start-up (the process imports MLflow) is not what is measured
            lost[side].append(stood_still(seconds))
            if running:
                running.finish()
    report(lost)


def logger(repeat: int, seconds: float, store_dir: Path) -> None:
    """The main thread's lost share with no logging, and with rank 0's MetricLogger logging a step
    every STEP_S (one-GPU ZeRO-3's pace) at the default buffer, its writes inside the window; the
    heap frozen as FreezeHeap freezes it for training."""
    uri, _, run_id = new_run(store_dir / "mlflow.db", "logger")
    metrics = MetricLogger(RunRef(uri, run_id), TrackingConf.buffer_s)
    gc.collect()
    gc.freeze()
    sides = {
        "no logging": None,
        f"MetricLogger, a step every {STEP_S} s": lambda n: metrics(dict.fromkeys(VALUES, n), n),
    }
    lost: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeat):
        for side, step in sides.items():
            lost[side].append(stood_still(seconds, step))
            metrics.flush()
    report(lost)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--step-ms", type=float, default=50.0)
    ap.add_argument("--buffer-s", default=f"0,{TrackingConf.buffer_s}")
    ap.add_argument("--train", help="a point's overrides: train it instead of the logger alone")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sampler", action="store_true", help="the system-metrics sampler's cost instead")
    ap.add_argument("--logger", action="store_true", help="rank 0's metric logging's cost instead")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.sampler:
            sampler(a.repeat, a.seconds, Path(tmp))
            return
        if a.logger:
            logger(a.repeat, a.seconds, Path(tmp))
            return
        if a.train:
            train(a.train, a.repeat, a.steps, Path(tmp))
            return
        for buffer_s in (int(b) for b in a.buffer_s.split(",")):
            ms = cost(buffer_s, a.steps, a.step_ms, Path(tmp))
            every = f"{a.steps} steps, one per {a.step_ms:g} ms"
            print(f"tracking.buffer_s={buffer_s}: {ms:.2f} ms of CPU a step ({every})")


if __name__ == "__main__":
    main()
