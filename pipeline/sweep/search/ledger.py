"""The search in MLflow: its parent run (found again when the search is rerun), the tags that tie
a trial run to its point, and the trials measured before (by this search, or by any search on this
host for the same composed config)."""

import json
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import track
from pipeline.sweep.info import SweepInfo
from pipeline.sweep.search.space import Point
from pipeline.track import RunRecord, RunState, Store

TRIAL_KEY = "zerosweep.search_trial"  # the trial's composed config (hash): same key, same training
POINT = "zerosweep.search_point"  # its knob values, as JSON
PRUNED = "zerosweep.pruned"  # why it was stopped early
SEARCH = "zerosweep.search"


@dataclass
class Measured:
    """One point's outcome: FINISHED (measured), PRUNED (stopped early), SKIPPED (never started),
    FAILED or KILLED (not measured; tried again on a rerun)."""

    point: Point
    name: str
    state: str
    run_id: str | None = None
    how: str = ""
    # Mean step time of each prefix of the timed steps (Optuna's intermediate values).
    running: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def step_s(self) -> float | None:
        return self.metrics.get("avg_step_time_s") if self.state == "FINISHED" else None

    @property
    def measured(self) -> bool:
        """Counted among search.trials: it started training (here or before), whatever came of it."""
        return self.state in ("FINISHED", "PRUNED", "FAILED", "KILLED")


@dataclass
class Ledger:
    store: Store
    experiment_id: str
    info: SweepInfo
    sweep_dir: Path

    @classmethod
    def open(
        cls, store: Store, experiment_id: str, key: str, outputs_dir: str, overrides: list[str]
    ) -> "Ledger":
        """The parent run of this search's command line left unfinished (its driver stopped or was
        killed), reopened; else a new one in a new dir under <outputs_dir>/searches/."""
        found = store.unfinished_sweep(experiment_id, key)
        if found and Path(found.tags.get(track.SWEEP_DIR, "")).is_dir():
            parent, sweep_dir = found.run_id, Path(found.tags[track.SWEEP_DIR])
            store.reopen(parent)
        else:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
            sweep_dir = (Path(outputs_dir) / "searches" / stamp).absolute()
            sweep_dir.mkdir(parents=True)
            tags = {track.ROLE: "sweep", track.SWEEP_KEY: key, SEARCH: "fastest"}
            tags[track.SWEEP_DIR] = str(sweep_dir)
            name = "search: " + (" ".join(overrides) or "fastest")
            parent = store.create_run(experiment_id, name, tags, {"sweep.overrides": " ".join(overrides)})
        store.tag(parent, track.owner_tags())  # this driver owns it now
        info = SweepInfo(parent, experiment_id, store.uri, overrides, varying=[])
        info.save(sweep_dir)
        return cls(store, experiment_id, info, sweep_dir)

    @property
    def parent(self) -> str:
        return self.info.parent_run_id

    def trial_tags(self, point: Point, trial_key: str) -> dict[str, str]:
        return {track.PARENT: self.parent, TRIAL_KEY: trial_key, POINT: json.dumps(point, sort_keys=True)}

    def earlier(self) -> list[tuple[RunRecord, Point]]:
        """This search's trial runs so far, oldest first, with their points."""
        runs = self.store.children(self.experiment_id, self.parent)
        return [(run, json.loads(run.tags[POINT])) for run in runs if POINT in run.tags]

    def slurm_jobs(self) -> list[str]:
        """The Slurm jobs this search's trials ran as (launcher=slurm), oldest first."""
        return [run.tags[track.SLURM_JOB] for run, _ in self.earlier() if track.SLURM_JOB in run.tags]

    def measured_before(self, trial_key: str) -> RunRecord | None:
        """The newest finished run of this very trial on this host, from any search."""
        where = f"tags.`{TRIAL_KEY}` = '{trial_key}' and tags.`zerosweep.host` = '{socket.gethostname()}'"
        where += " and attributes.status = 'FINISHED'"
        found = self.store.search(self.experiment_id, where, newest_first=True, limit=1)
        return found[0] if found else None

    def running_means(self, run_id: str, warmup: int) -> list[float]:
        """The mean of the timed steps so far, after each timed step."""
        timed = [value for step, value in self.store.history(run_id, "step_time_s") if step > warmup]
        return [sum(timed[: i + 1]) / (i + 1) for i in range(len(timed))]

    def outcome(self, run: RunRecord, point: Point, name: str, warmup: int) -> Measured:
        """What a trial run says about its point."""
        state = run.state.value
        if run.state == RunState.KILLED and PRUNED in run.tags:
            state = "PRUNED"
        how = run.tags.get(PRUNED, "") if state == "PRUNED" else run.tags.get(track.SKIPPED, "")
        running = self.running_means(run.run_id, warmup) if state in ("FINISHED", "PRUNED") else []
        return Measured(point, name, state, run.run_id, how, running, dict(run.metrics))

    def close(self, state: RunState, artifacts: dict[str, Any]) -> None:
        for path, value in artifacts.items():
            if isinstance(value, str):
                self.store.log_text(self.parent, value, path)
            else:
                self.store.log_dict(self.parent, value, path)
        self.store.end(self.parent, state)
