"""A sweep's points as a table: one row per point from what its MLflow run logged, formatted as
the CLI prints it at the sweep's end and the report embeds it."""

from typing import Any

from pipeline.sweep_info import SweepInfo
from pipeline.track import SLURM_JOB, Store

CHOICES = ["zero", "offload", "precision", "optimizer"]
RESULTS = ["final_loss", "avg_tokens_per_s", "avg_step_time_s", "peak_memory_gib"]
# The CLI's table: the name stands for the choices (it holds what varies).
SHORT = ["name", "state", *RESULTS, "run_id"]


def rows(info: SweepInfo) -> list[dict[str, Any]]:
    """One row per point of the sweep, in the order the points started."""
    table = []
    for run in Store(info.tracking_uri).children(info.experiment_id, info.parent_run_id):
        row: dict[str, Any] = {"run_id": run.run_id, "name": run.name, "state": run.state}
        row["slurm_job"] = run.tags.get(SLURM_JOB)
        row.update({k: run.params.get(k) for k in CHOICES})
        row.update({k: run.metrics.get(k) for k in RESULTS})
        table.append(row)
    return table


def format_table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    """Aligned text table; by default the short columns, with Slurm's job ids for Slurm sweeps."""
    if cols is None:
        slurm = ["slurm_job"] if any(r.get("slurm_job") for r in rows) else []
        cols = SHORT[:1] + slurm + SHORT[1:]
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return "-" if v is None else str(v)
