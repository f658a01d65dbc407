"""A sweep's points as a table: one row per point from what its MLflow run logged, formatted as
the CLI prints it at the sweep's end and the report embeds it."""

from typing import Any

from pipeline.sweep.info import SweepInfo
from pipeline.track import POINT_KEY, SLURM_JOB, SWEEP_DIR, RunRecord, Store

CHOICES = ["zero", "offload", "precision", "optimizer"]
RESULTS = ["final_loss", "avg_tokens_per_s", "avg_step_time_s", "peak_memory_gib"]
# The CLI's table: the name stands for the choices (it holds what varies).
SHORT = ["name", "state", *RESULTS, "run_id"]


def rows(info: SweepInfo, sweep_dir: str | None = None) -> list[dict[str, Any]]:
    """One row per point of the sweep, in the order the points started: its last try decides
    (retries, reruns of a stopped sweep). "how" says how the point got there: finished in an
    earlier run of the sweep (when sweep_dir, this run's dir, is given), carried on from a
    checkpoint, or tried several times."""
    last: dict[str, Any] = {}
    tries: dict[str, int] = {}
    for run in Store(info.tracking_uri).children(info.experiment_id, info.parent_run_id):
        key = run.tags.get(POINT_KEY, run.run_id)
        last[key] = run
        tries[key] = tries.get(key, 0) + 1
    table = []
    for key, run in last.items():
        row: dict[str, Any] = {"run_id": run.run_id, "name": run.name, "state": run.state}
        row["slurm_job"] = run.tags.get(SLURM_JOB)
        row["how"] = how(run, tries[key], sweep_dir)
        row.update({k: run.params.get(k) for k in CHOICES})
        row.update({k: run.metrics.get(k) for k in RESULTS})
        table.append(row)
    return table


def how(run: RunRecord, tries: int, sweep_dir: str | None) -> str:
    if sweep_dir and run.tags.get(SWEEP_DIR) not in (None, str(sweep_dir)):
        return "earlier run"
    said = (
        [f"carried on from step {run.metrics['resumed_from_step']:.0f}"]
        if run.metrics.get("resumed_from_step")
        else []
    )
    if tries > 1:
        said.append(f"try {tries}")
    return ", ".join(said)


def format_table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    """Aligned text table; by default the short columns, with Slurm's job ids for Slurm sweeps."""
    if cols is None:
        slurm = ["slurm_job"] if any(r.get("slurm_job") for r in rows) else []
        said = ["how"] if any(r.get("how") for r in rows) else []
        cols = SHORT[:1] + slurm + SHORT[1:] + said
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return "-" if v is None else str(v)
