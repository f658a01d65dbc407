"""One trial: is the point worth starting (the rules, the machine, the memory plan), and if so a
short run of it in a child process, watched through its step times in MLflow and stopped when the
pruner says it cannot beat the best so far. Start-up (process, model, DeepSpeed, compile outside
the steps) and the warm-up steps are timed apart from the timed steps."""

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline import fit, plan, preflight, rules
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.search.ledger import PRUNED, Ledger, Measured
from pipeline.search.space import Point
from pipeline.track import RUN_ID_FILE, RunState

POLL_S = 0.5
# Prune(mean step time so far, timed step) -> True: stop the trial now.
Prune = Callable[[float, int], bool]


def refusal(cfg: Config) -> str | None:
    """Why this point is not started: a rule refuses it, this machine cannot run it, or its memory
    plan does not fit the GPU (launcher.gpu_mem_gib stands in for it) or host; None: start it."""
    try:
        rules.check(cfg)
        with preflight.quiet():  # DeepSpeed's estimators announce the accelerator on import
            memory = plan.checked(cfg, Path(cfg.outputs_dir), use_cpu=True, runs_here=True).memory
    except ConfigError as e:
        return str(e).split(". Fix:")[0]
    if not cfg.check_fit:
        return None
    return fit.shortfall(cfg, memory, fit.Capacity.of(cfg, runs_here=True))


def run(
    cmd: list[str], out: Path, ledger: Ledger, tags: dict[str, str], warmup: int, prune: Prune
) -> tuple[str | None, bool, float]:
    """Train the trial (cmd: a one-point multirun whose output dir is out); returns its run id,
    whether it was pruned, and its wall time. Its output goes to out/trial.log."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # MLFLOW_RUN_ID nests wrongly
    with open(out / "trial.log", "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
    run_id, pruned, reported = None, False, 0
    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            if run_id is None and (out / RUN_ID_FILE).exists():
                run_id = (out / RUN_ID_FILE).read_text().strip() or None
                if run_id:
                    ledger.store.tag(run_id, tags)
            if run_id is None or pruned:
                continue
            running = ledger.running_means(run_id, warmup)
            for step in range(reported + 1, len(running) + 1):
                reported = step
                if prune(running[step - 1], step):
                    why = f"pruned after {step} timed steps: {running[step - 1] * 1000:.1f} ms/step"
                    ledger.store.tag(run_id, {PRUNED: why + ", cannot beat the best so far"})
                    proc.send_signal(signal.SIGTERM)  # the run ends KILLED, saying why
                    pruned = True
                    break
    except BaseException:  # Ctrl-C or a kill of the search: the trial goes with it
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    return run_id, pruned, time.perf_counter() - started


def measured(
    ledger: Ledger, run_id: str | None, point: Point, name: str, warmup: int, wall_s: float, out: Path
) -> Measured:
    """The trial's outcome, with its start-up and warm-up time logged beside its step time."""
    if run_id is None:
        tail = (
            (out / "trial.log").read_text().strip().splitlines()[-1:] if (out / "trial.log").exists() else []
        )
        return Measured(point, name, "FAILED", None, f"no run started: {' '.join(tail)}")
    result = ledger.outcome(ledger.store.get(run_id), point, name, warmup)
    steps = [value for _, value in ledger.store.history(run_id, "step_time_s")]
    timing = {
        "search_wall_s": wall_s,
        "search_startup_s": wall_s - sum(steps),  # process, model, DeepSpeed, data: outside the steps
        "search_warmup_s": sum(steps[:warmup]),  # the warm-up steps: compilation lands here
    }
    ledger.store.log_metrics(run_id, timing, step=0)
    result.metrics.update(timing)
    if result.state == RunState.FAILED.value:
        result.how = "failed: see its error.txt"
    return result


def _die_with_parent() -> None:
    """The trial gets SIGTERM when the search's process dies, even by SIGKILL (Linux prctl
    PR_SET_PDEATHSIG): its run then ends KILLED instead of training on unwatched."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def command(overrides: list[str], sweep_dir: Path, out: Path, run_name: str) -> list[str]:
    """A one-point multirun into the search's dir: its job finds the parent run in sweep.json and
    becomes a child run; without the sweep callback it makes no parent of its own."""
    return [
        sys.executable,
        "-m",
        "pipeline",
        "-m",
        *overrides,
        f"tracking.run_name='{run_name}'",  # quoted: its commas would make a sweep
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweep.subdir={out.name}",
        "~hydra.callbacks.sweep",
    ]
