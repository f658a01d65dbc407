"""A multirun as one MLflow parent run, its points as child runs named after what varies.

Hydra calls these hooks in the launching process: the parent run and sweep.json at the start,
each point's outcome as it ends, and the table, the report and the parent's status at the end (the
parent's life is the sweep core's, core.py, which the search shares).
"""

import hashlib
import sys
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline import config as schema
from pipeline import track
from pipeline.check import compose
from pipeline.job import Outcome
from pipeline.report import table
from pipeline.sweep.core import Sweep
from pipeline.sweep.info import SweepInfo, varying_keys
from pipeline.track import RunState
from pipeline.track.secrets import masked


class SweepRun(Callback):
    """Parent run at multirun start; the table of points, and the parent's status, at the end.
    Hydra turns an exception raised here into a warning: what the exit status must say is kept in
    this module (failed()) and read by the command line once Hydra returns."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = schema.load(config)
        if cfg.dry_run or not cfg.tracking.enabled:
            return
        overrides = list(config.hydra.overrides.task)
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        store, experiment_id = track.prepared(cfg)
        name = " ".join(overrides) or "sweep"
        points = point_keys(config, overrides)
        key = hashlib.sha1(" ".join(points).encode()).hexdigest()[:16]
        parent, added = carried_on(store, experiment_id, cfg.sweep.resume, key, points)
        varying = varying_keys(overrides)
        tags = {track.SWEEP_POINTS: " ".join(points)} if len(points) <= MAX_LISTED_POINTS else {}
        Sweep.open(
            store, experiment_id, key, parent, sweep_dir, f"sweep: {name}", name, overrides, varying, tags
        )
        if parent:
            widened = f", {added} point{'s' * (added > 1)} added" if added else ""
            print(
                f"carrying on in sweep {parent} (sweep.resume={cfg.sweep.resume}): its finished points "
                f"stay{widened}"
            )
        _active.append(sweep_dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.COMPLETED:  # its return_value would raise the job's error
            _failures.append("a point's job raised")
            return
        outcome = job_return.return_value
        if isinstance(outcome, Outcome) and outcome.state is not None and not outcome.state.ok:
            _failures.append("a point did not finish")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _active.clear()
        try:
            failed = close(Path(config.hydra.sweep.dir), failed=bool(_failures))
        except Exception as e:
            _failures.append("the sweep's end could not be recorded")
            why = masked(f"{type(e).__name__}: {e}")  # MLflow's errors name the URL they asked
            print(f"error: the sweep's end could not be recorded: {why}", file=sys.stderr)
            raise
        if failed:
            _failures.append("a point did not finish")
            print("some points failed: see their MLflow runs (error.txt)", file=sys.stderr)


# The sweep this process is running, for close_interrupted; and what went wrong in it, for failed().
_active: list[Path] = []
_failures: list[str] = []


def failed() -> bool:
    """A sweep of this process had a point that did not finish, or could not be closed: exit 1."""
    return bool(_failures)


def close(sweep_dir: Path, failed: bool, stopped: bool = False) -> bool:
    """The sweep's end: its table and report, and its parent run closed. Returns whether it failed."""
    sweep = Sweep.load(sweep_dir)
    if sweep is None:
        return failed
    rows = table.rows(sweep.store, sweep.info, str(sweep_dir.absolute()))
    failed = failed or not all(r.state.ok for r in rows)
    state = RunState.KILLED if stopped else RunState.FAILED if failed else RunState.FINISHED
    heading = f"sweep {sweep_dir}: {len(rows)} points, MLflow parent run {sweep.parent}"
    html = sweep.close(heading, rows, table.SWEEP, "sweep_table", state)
    print(f"report: {html} (also on the parent run's artifacts, report/)")
    return failed


def close_interrupted() -> None:
    """A sweep stopped by Ctrl-C or a kill still closes its parent (KILLED) and writes its table and
    report for the points that ended."""
    if _active:
        close(_active.pop(), failed=True, stopped=True)


# Points listed on a sweep's parent (17 characters each: MLflow 3 keeps tags up to 8000).
MAX_LISTED_POINTS = 450


def point_keys(config: DictConfig, overrides: list[str]) -> list[str]:
    """The sweep's points by meaning (track.point_key of each point as its job will compose it),
    sorted: the same sweep however its overrides are ordered or spelled. Not sweep.* keys: they say
    how to run it, not what."""
    loader = GlobalHydra.instance().config_loader()
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("sweep.")]
    keys = set()
    for point in compose.sweep_points(kept, multirun=True):
        job = loader.load_sweep_config(config, point)
        cfg = schema.load(job)
        keys.add(track.point_key(cfg, track.flat_params(cfg, job.hydra.runtime.choices)))
    return sorted(keys)


def carried_on(
    store: track.Store, experiment_id: str, resume: str, key: str, points: list[str]
) -> tuple[str | None, int]:
    """The parent run a sweep carries on in, and how many points it adds to it: the newest
    unfinished sweep of the same points, or else of fewer of them (widened) (auto); the one named
    (its dir or parent run id); or none (new)."""
    if resume == "new":
        return None, 0
    if resume == "auto":
        unfinished = store.unfinished_sweeps(experiment_id)
        for run in unfinished:
            if run.tags.get(track.SWEEP_KEY) == key:
                return run.run_id, 0
        for run in unfinished:
            listed = set(run.tags.get(track.SWEEP_POINTS, "").split())
            if listed and listed < set(points):
                return run.run_id, len(set(points) - listed)
        return None, 0
    info = SweepInfo.load(resume)
    return (info.parent_run_id if info else resume), 0
