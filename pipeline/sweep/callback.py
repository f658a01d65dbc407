"""A multirun as one MLflow parent run, its points as child runs named after what varies.

Hydra calls these hooks in the launching process: the parent run and sweep.json at the start,
each point's outcome as it ends, and the table, the report and the parent's status at the end.
"""

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline import config as schema
from pipeline import track
from pipeline.job import Outcome
from pipeline.report import page, table
from pipeline.sweep.info import SweepInfo, varying_keys
from pipeline.track import RunState


class SweepRun(Callback):
    """Parent run at multirun start; the table of points, and the parent's status, at the end."""

    def __init__(self) -> None:
        self.failed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = schema.load(config)
        if cfg.dry_run or not cfg.tracking.enabled:
            return
        overrides = list(config.hydra.overrides.task)
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        store = track.Store(track.tracking_uri(cfg))
        experiment_id = track.prepare(cfg)
        name = " ".join(overrides) or "sweep"
        key = " ".join(o for o in overrides if not o.startswith("sweep.")) or "sweep"
        tags = {
            track.SWEEP_DIR: str(sweep_dir),
            track.ROLE: "sweep",
            track.SWEEP_KEY: key,
            **track.owner_tags(),
        }
        parent = carried_on(store, experiment_id, cfg.sweep.resume, key)
        if parent:
            store.reopen(parent)
            store.tag(parent, tags)
            print(
                f"carrying on in sweep {parent} (sweep.resume={cfg.sweep.resume}): its finished points stay"
            )
        else:
            parent = store.create_run(experiment_id, f"sweep: {name}", tags, {"sweep.overrides": name})
        SweepInfo(parent, experiment_id, store.uri, overrides, varying_keys(overrides)).save(sweep_dir)
        _active.append(sweep_dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.COMPLETED:  # its return_value would raise the job's error
            self.failed = True
            return
        outcome = job_return.return_value
        if isinstance(outcome, Outcome) and outcome.state is not None and not outcome.state.ok:
            self.failed = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _active.clear()
        failed = close(Path(config.hydra.sweep.dir), self.failed)
        if failed:
            print("some points failed: see their MLflow runs (error.txt)", file=sys.stderr)
            sys.exit(1)


# The sweep this process is running, for close_interrupted.
_active: list[Path] = []


def close(sweep_dir: Path, failed: bool, stopped: bool = False) -> bool:
    """The sweep's end: its table and report, and its parent run closed. Returns whether it failed."""
    info = SweepInfo.load(sweep_dir)
    if info is None:
        return failed
    rows = table.rows(info, str(sweep_dir.absolute()))
    text = table.format_table(rows)
    store = track.Store(info.tracking_uri)
    store.log_text(info.parent_run_id, text + "\n", "sweep_table.txt")
    store.log_dict(info.parent_run_id, rows, "sweep_table.json")
    failed = failed or not all(r["state"].ok for r in rows)
    state = RunState.KILLED if stopped else RunState.FAILED if failed else RunState.FINISHED
    store.end(info.parent_run_id, state)
    html = page.write(info, sweep_dir)
    print(f"\n== sweep {sweep_dir}: {len(rows)} points, MLflow parent run {info.parent_run_id} ==")
    print(text)
    print(f"report: {html} (also on the parent run's artifacts, report/)")
    return failed


def close_interrupted() -> None:
    """A sweep stopped by Ctrl-C or a kill still closes its parent (KILLED) and writes its table and
    report for the points that ended."""
    if _active:
        close(_active.pop(), failed=True, stopped=True)


def carried_on(store: track.Store, experiment_id: str, resume: str, key: str) -> str | None:
    """The parent run a sweep carries on in: the newest unfinished sweep of the same command line
    (auto), the one named (its dir or parent run id), or none (new)."""
    if resume == "new":
        return None
    if resume == "auto":
        found = store.unfinished_sweep(experiment_id, key)
        return found.run_id if found else None
    info = SweepInfo.load(resume)
    return info.parent_run_id if info else resume
