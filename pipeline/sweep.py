"""A multirun as one MLflow parent run, its points as child runs named after what varies.

Hydra calls these hooks in the launching process (start, end) and around each job; the
parent's id travels to the jobs through <sweep dir>/sweep.json, which also works for jobs
that run on other machines, and never through MLFLOW_RUN_ID (it would override the nesting).
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline import track

SWEEP_FILE = "sweep.json"
COLUMNS = ["zero", "offload", "precision", "optimizer", "state", "final_loss", "avg_tokens_per_s",
           "avg_step_time_s", "peak_memory_gib"]


def sweep_info(sweep_dir: str) -> Optional[Dict[str, Any]]:
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def varying_keys(overrides: List[str]) -> List[str]:
    """The keys a sweep gives several values (zero=stage1,stage2 -> zero)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def child_name(task_overrides: List[str], varying: List[str]) -> str:
    picked = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in varying]
    return ",".join(picked) or ",".join(task_overrides) or "default"


def tag_parent(sweep_dir: str, tags: Dict[str, str]) -> None:
    info = sweep_info(sweep_dir)
    if info:
        MlflowClient(info["tracking_uri"]).log_batch(info["parent_run_id"], tags=[RunTag(k, v) for k, v in tags.items()])


def child_run_id(sweep_dir: str, slurm_job_id: str) -> Optional[str]:
    """The run of the point that Slurm job ran, if it got as far as creating one."""
    info = sweep_info(sweep_dir)
    if info is None:
        return None
    runs = MlflowClient(info["tracking_uri"]).search_runs(
        [info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}' and "
        f"tags.zerosweep.slurm_job_id = '{slurm_job_id}'")
    return runs[0].info.run_id if runs else None


def child_rows(uri: str, experiment_id: str, parent_run_id: str) -> List[Dict[str, Any]]:
    """One row per point of the sweep, from what its run logged."""
    runs = MlflowClient(uri).search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                         order_by=["attributes.start_time ASC"], max_results=10000)
    rows = []
    for r in runs:
        row: Dict[str, Any] = {"run_id": r.info.run_id, "name": r.info.run_name, "state": r.info.status,
                               "slurm_job": r.data.tags.get("zerosweep.slurm_job_id")}
        row.update({k: r.data.params.get(k) for k in ("zero", "offload", "precision", "optimizer")})
        row.update({k: r.data.metrics.get(k) for k in COLUMNS[5:]})
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, Any]], cols: Optional[List[str]] = None) -> str:
    """Aligned text table; by default the name stands for the choices (it holds what varies), and
    Slurm sweeps get their job ids."""
    slurm = ["slurm_job"] if any(r.get("slurm_job") for r in rows) else []
    cols = cols or ["name"] + slurm + [c for c in COLUMNS if c not in ("zero", "offload", "precision", "optimizer")] + ["run_id"]
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return "-" if v is None else str(v)


class SweepRun(Callback):
    """Parent run at multirun start; the table of points, and the parent's status, at the end."""

    def __init__(self) -> None:
        self.failed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.dry_run or not config.tracking.enabled:
            return
        overrides = list(config.hydra.overrides.task)
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        experiment_id = track.prepare(config)
        client = MlflowClient(track.tracking_uri(config))
        name = " ".join(overrides) or "sweep"
        parent = client.create_run(experiment_id, run_name=f"sweep: {name}",
                                   tags={"zerosweep.sweep_dir": str(sweep_dir), "zerosweep.role": "sweep",
                                         **track.owner_tags()})
        client.log_batch(parent.info.run_id, params=[Param("sweep.overrides", name)])
        info = {"parent_run_id": parent.info.run_id, "experiment_id": experiment_id,
                "tracking_uri": track.tracking_uri(config), "overrides": overrides,
                "varying": varying_keys(overrides)}
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if isinstance(job_return.return_value, dict) and job_return.return_value.get("state") == "FAILED":
            self.failed = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        info = sweep_info(config.hydra.sweep.dir)
        if info is None:
            return
        rows = child_rows(info["tracking_uri"], info["experiment_id"], info["parent_run_id"])
        table = format_table(rows)
        client = MlflowClient(info["tracking_uri"])
        client.log_text(info["parent_run_id"], table + "\n", "sweep_table.txt")
        client.log_dict(info["parent_run_id"], rows, "sweep_table.json")
        failed = self.failed or any(r["state"] != "FINISHED" for r in rows)
        client.set_terminated(info["parent_run_id"], "FAILED" if failed else "FINISHED")
        from pipeline import report  # report builds on this module's rows: imported here to avoid a cycle
        html = report.write(info, config.hydra.sweep.dir)
        print(f"\n== sweep {config.hydra.sweep.dir}: {len(rows)} points, MLflow parent run {info['parent_run_id']} ==")
        print(table)
        print(f"report: {html} (also on the parent run's artifacts, report/)")
        if failed:
            print("some points failed: see their MLflow runs (error.txt)", file=sys.stderr)
            sys.exit(1)
