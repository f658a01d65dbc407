"""One trial: is the point worth starting (the rules, the machine, the memory plan), and if so a
short run of it in a child process (training here, or waiting on its Slurm job with launcher=slurm;
several at once with search.parallel), watched through its step times in MLflow and stopped when
the pruner says it cannot beat the best so far. Start-up (process, model, DeepSpeed, compile outside
the steps) and the warm-up steps are timed apart from the timed steps."""

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import launch
from pipeline.check import gate, preflight
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.sweep.search.ledger import Ledger, Measured
from pipeline.sweep.search.space import Point
from pipeline.track import PRUNED, RUN_ID_FILE, RunState

POLL_S = 0.5
# Prune(mean step time so far, timed step) -> True: stop the trial now.
Prune = Callable[[float, int], bool]


def refusal(cfg: Config) -> str | None:
    """Why this point is not started: a rule refuses it, the machine it would train on cannot run it,
    or its memory plan does not fit the GPU (launcher.gpu_mem_gib: a cluster's nodes, or a stand-in
    for this machine's) or host; None: start it."""
    runs_here = not launch.submits(cfg.launcher.name, multirun=True)  # a trial is a one-point sweep
    try:
        with preflight.quiet():  # DeepSpeed's estimators announce the accelerator on import
            misfit = gate.admit(cfg, Path(cfg.outputs_dir), use_cpu=True, runs_here=runs_here).misfit
    except ConfigError as e:
        return str(e).split(". Fix:")[0]
    return misfit.problem if misfit else None


@dataclass
class Training:
    """A trial training in its child process (here, or waiting on its Slurm job), looked at by the
    driver every POLL_S among the others running at the same time."""

    proc: subprocess.Popen
    out: Path
    ledger: Ledger
    tags: dict[str, str]
    warmup: int
    prune: Prune
    started: float
    run_id: str | None = None
    pruned: bool = False
    reported: int = 0  # the timed steps the pruner was told so far

    @classmethod
    def start(
        cls, cmd: list[str], out: Path, ledger: Ledger, tags: dict[str, str], warmup: int, prune: Prune
    ) -> "Training":
        """Start the trial (cmd: a one-point multirun whose output dir is out); its output goes to
        out/trial.log."""
        out.mkdir(parents=True, exist_ok=True)
        # MLFLOW_RUN_ID would nest the trial's run wrongly
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with open(out / "trial.log", "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )
        return cls(proc, out, ledger, tags, warmup, prune, time.perf_counter())

    def poll(self) -> bool:
        """One look: tag its run once it exists, hand the pruner its new timed steps, stop it when
        pruned (SIGTERM: its run ends KILLED, saying why; a Slurm trial's job is cancelled). True
        while it runs."""
        ended = self.proc.poll() is not None
        if self.run_id is None and (self.out / RUN_ID_FILE).exists():
            self.run_id = (self.out / RUN_ID_FILE).read_text().strip() or None
            if self.run_id:
                self.ledger.store.tag(self.run_id, self.tags)
        if ended or self.run_id is None or self.pruned:
            return not ended
        running = self.ledger.running_means(self.run_id, self.warmup)
        for step in range(self.reported + 1, len(running) + 1):
            self.reported = step
            if self.prune(running[step - 1], step):
                why = f"pruned after {step} timed steps: {running[step - 1] * 1000:.1f} ms/step"
                self.ledger.store.tag(self.run_id, {PRUNED: why + ", cannot beat the best so far"})
                self.proc.send_signal(signal.SIGTERM)
                self.pruned = True
                break
        return True

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started


def stop(running: list[Training]) -> None:
    """Ctrl-C or a kill of the search: its trials go with it, all signalled before any is waited for
    (a Slurm trial's driver cancels its job on the way out)."""
    for training in running:
        training.proc.send_signal(signal.SIGTERM)
    for training in running:
        training.proc.wait()


def measured(training: Training, point: Point, name: str) -> Measured:
    """The ended trial's outcome, with its start-up and warm-up time logged beside its step time (a
    Slurm trial's start-up includes its wait in the queue)."""
    ledger, out, warmup, wall_s = training.ledger, training.out, training.warmup, training.wall_s
    run_id = training.run_id
    if run_id is None:
        tail = (
            (out / "trial.log").read_text().strip().splitlines()[-1:] if (out / "trial.log").exists() else []
        )
        return Measured(point, name, RunState.FAILED, None, f"no run started: {' '.join(tail)}")
    result = ledger.outcome(ledger.store.get(run_id), point, name, warmup)
    if training.pruned and result.state == RunState.FINISHED:
        # Pruned as it finished (the stop came after its last step): it measured every step.
        ledger.store.untag(run_id, PRUNED)
    steps = [value for _, value in ledger.store.history(run_id, "step_time_s")]
    timing = {
        "search_wall_s": wall_s,
        "search_startup_s": wall_s - sum(steps),  # process, model, DeepSpeed, data: outside the steps
        "search_warmup_s": sum(steps[:warmup]),  # the warm-up steps: compilation lands here
    }
    ledger.store.log_metrics(run_id, timing, step=0)
    result.metrics.update(timing)
    if result.state == RunState.FAILED:
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
