"""The search in MLflow: its sweep (the parent run, found again when the search is rerun, and its dir),
the tags that tie a trial run to its point, and what the trial runs say about their points."""

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pipeline import track
from pipeline.sweep.core import Sweep
from pipeline.sweep.search.space import Point
from pipeline.track import RunRecord, RunState, Store

# Counted among search.trials: it started training (here or before), whatever came of it.
STARTED = (RunState.FINISHED, RunState.PRUNED, RunState.FAILED, RunState.KILLED)


@dataclass
class Measured:
    """One point's outcome: FINISHED (measured), PRUNED (stopped early), SKIPPED (never started),
    FAILED or KILLED (not measured; tried again on a rerun)."""

    point: Point
    name: str
    state: RunState
    run_id: str | None = None
    how: str = ""
    # Mean step time of each prefix of the timed steps (Optuna's intermediate values).
    running: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def step_s(self) -> float | None:
        return self.metrics.get("avg_step_time_s") if self.state == RunState.FINISHED else None

    @property
    def measured(self) -> bool:
        return self.state in STARTED


@dataclass
class Ledger:
    """The search's sweep (its parent run and dir, the core's) and what its trial runs say."""

    sweep: Sweep

    @classmethod
    def open(
        cls, store: Store, experiment_id: str, key: str, outputs_dir: str, overrides: list[str]
    ) -> "Ledger":
        """The parent run of this search's command line left unfinished (its driver stopped or was
        killed), reopened in its dir; else a new one in a new dir under <outputs_dir>/searches/."""
        found = next(iter(store.unfinished_sweeps(experiment_id, key)), None)
        carried_on = None
        if found and Path(found.tags.get(track.SWEEP_DIR, "")).is_dir():
            carried_on, sweep_dir = found.run_id, Path(found.tags[track.SWEEP_DIR])
        else:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
            sweep_dir = (Path(outputs_dir) / "searches" / stamp).absolute()
            sweep_dir.mkdir(parents=True)
        name = "search: " + (" ".join(overrides) or "fastest")
        command = " ".join(overrides)
        tags = {track.SEARCH: "fastest"}
        return cls(
            Sweep.open(store, experiment_id, key, carried_on, sweep_dir, name, command, overrides, [], tags)
        )

    @property
    def store(self) -> Store:
        return self.sweep.store

    @property
    def experiment_id(self) -> str:
        return self.sweep.info.experiment_id

    @property
    def parent(self) -> str:
        return self.sweep.parent

    @property
    def sweep_dir(self) -> Path:
        return self.sweep.sweep_dir

    def trial_tags(self, point: Point, trial_key: str) -> dict[str, str]:
        point_json = json.dumps(point, sort_keys=True)
        return {track.PARENT: self.parent, track.TRIAL_KEY: trial_key, track.SEARCH_POINT: point_json}

    def earlier(self) -> list[tuple[RunRecord, Point]]:
        """This search's trial runs so far, oldest first, with their points."""
        runs = self.store.children(self.experiment_id, self.parent)
        return [
            (run, json.loads(run.tags[track.SEARCH_POINT])) for run in runs if track.SEARCH_POINT in run.tags
        ]

    def slurm_jobs(self) -> list[str]:
        """The Slurm jobs this search's trials ran as (launcher=slurm), oldest first."""
        return [run.tags[track.SLURM_JOB] for run, _ in self.earlier() if track.SLURM_JOB in run.tags]

    def measured_before(self, trial_key: str) -> RunRecord | None:
        """The newest finished run of this very trial on this host, from any search."""
        return self.store.measured_before(self.experiment_id, trial_key)

    def running_means(self, run_id: str, warmup: int) -> list[float]:
        """The mean of the timed steps so far, after each timed step."""
        timed = [value for step, value in self.store.history(run_id, "step_time_s") if step > warmup]
        return [sum(timed[: i + 1]) / (i + 1) for i in range(len(timed))]

    def outcome(self, run: RunRecord, point: Point, name: str, warmup: int) -> Measured:
        """What a trial run says about its point."""
        state = run.trial_state
        running = (
            self.running_means(run.run_id, warmup) if state in (RunState.FINISHED, RunState.PRUNED) else []
        )
        return Measured(point, name, state, run.run_id, run.reason, running, dict(run.metrics))
