"""A sweep's points as a table: one Row per point (from what its MLflow run logged, or from a search
trial's outcome) and one formatter, the aligned text the CLI prints and the artifacts keep, whose
cells the HTML report shows too. Each view picks its columns: the sweep's end (SWEEP), the report
(page.py) and the search's ranking (search/winner.py)."""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.sweep.info import SweepInfo
from pipeline.track import POINT_KEY, SLURM_JOB, SWEEP_DIR, RunRecord, RunState, Store

# The config groups whose options every point's row names.
CHOICES = ("zero", "offload", "precision", "optimizer")


@dataclass(frozen=True)
class Figures:
    """What a point's run logged, by the MLflow metrics' names (job.Summary's fields, and a search
    trial's start-up and warm-up); None where it logged none (yet)."""

    final_loss: float | None = None
    avg_tokens_per_s: float | None = None
    avg_step_time_s: float | None = None
    peak_memory_gib: float | None = None
    model_tflops: float | None = None
    search_startup_s: float | None = None
    search_warmup_s: float | None = None

    @classmethod
    def of(cls, metrics: Mapping[str, float]) -> "Figures":
        return cls(**{f.name: metrics.get(f.name) for f in dataclasses.fields(cls)})


@dataclass
class Row:
    """One point of a sweep or a search, as every table shows it."""

    name: str
    state: RunState
    run_id: str | None
    figures: Figures
    # How the point got there: from an earlier run, carried on, tried again, reused, why skipped.
    how: str = ""
    slurm_job: str | None = None
    choices: dict[str, str | None] = field(default_factory=dict)  # group -> option (CHOICES)
    rank: int | None = None  # a search's finished points, fastest first
    knobs: dict[str, Any] = field(default_factory=dict)  # a search's point: its JSON record keeps them

    @property
    def finished(self) -> bool:
        return self.state == RunState.FINISHED


@dataclass(frozen=True)
class Column:
    """A column: its header and its cell's value in a row (None shows as '-'); an optional one is
    shown only where some row has a value."""

    header: str
    value: Callable[[Row], Any]
    optional: bool = False

    def if_any(self) -> "Column":
        return dataclasses.replace(self, optional=True)


NAME = Column("name", lambda r: r.name)
STATE = Column("state", lambda r: r.state)
RUN_ID = Column("run_id", lambda r: r.run_id)
HOW = Column("how", lambda r: r.how)
SLURM_JOB_ID = Column("slurm_job", lambda r: r.slurm_job)
GROUPS = tuple(Column(group, lambda r, group=group: r.choices.get(group)) for group in CHOICES)
FINAL_LOSS = Column("final_loss", lambda r: r.figures.final_loss)
TOKENS_PER_S = Column("avg_tokens_per_s", lambda r: r.figures.avg_tokens_per_s)
STEP_TIME = Column("avg_step_time_s", lambda r: r.figures.avg_step_time_s)
PEAK_MEMORY = Column("peak_memory_gib", lambda r: r.figures.peak_memory_gib)


@dataclass(frozen=True)
class View:
    """A table as one reader sees it: the columns it shows, those its JSON records keep (the shown
    ones unless given; a row's knobs follow them), and whether its lines lose their trailing blanks
    (the search's ranking; the sweep's tables keep theirs)."""

    shown: tuple[Column, ...]
    kept: tuple[Column, ...] = ()
    strip: bool = False

    def cells(self, rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
        """The headers of the columns shown and each row's cells under them."""
        cols = [c for c in self.shown if not c.optional or any(c.value(r) for r in rows)]
        return [c.header for c in cols], [[fmt(c.value(r)) for c in cols] for r in rows]

    def text(self, rows: Sequence[Row]) -> str:
        """Aligned text: a header line, then a line per row."""
        headers, cells = self.cells(rows)
        widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(cs, widths, strict=True)) for cs in [headers, *cells]]
        return "\n".join(line.rstrip() if self.strip else line for line in lines)

    def records(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        """Each row as the table's JSON artifact keeps it: raw values by header, then its knobs."""
        records = []
        for r in rows:
            record = {c.header: c.value(r) for c in self.kept or self.shown}
            record.update({f"knob.{k}": v for k, v in r.knobs.items()})
            records.append(record)
        return records


FIGURES = (FINAL_LOSS, TOKENS_PER_S, STEP_TIME, PEAK_MEMORY)
# The sweep's end: the name stands for the choices (it holds what varies); Slurm's job ids for a
# Slurm sweep and "how" where a point has one.
SWEEP = View(
    shown=(NAME, SLURM_JOB_ID.if_any(), STATE, *FIGURES, RUN_ID, HOW.if_any()),
    kept=(RUN_ID, NAME, STATE, SLURM_JOB_ID, HOW, *GROUPS, *FIGURES),
)


def rows(store: Store, info: SweepInfo, sweep_dir: str | None = None) -> list[Row]:
    """One row per point of the sweep, in the order the points started: its last try decides
    (retries, reruns of a stopped sweep). "how" says how the point got there: finished in an
    earlier run of the sweep (when sweep_dir, this run's dir, is given), carried on from a
    checkpoint, or tried several times."""
    last: dict[str, RunRecord] = {}
    tries: dict[str, int] = {}
    for run in store.children(info.experiment_id, info.parent_run_id):
        key = run.tags.get(POINT_KEY, run.run_id)
        last[key] = run
        tries[key] = tries.get(key, 0) + 1
    return [
        Row(
            run.name,
            run.state,
            run.run_id,
            Figures.of(run.metrics),
            how(run, tries[key], sweep_dir),
            run.tags.get(SLURM_JOB),
            {group: run.params.get(group) for group in CHOICES},
        )
        for key, run in last.items()
    ]


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


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return "-" if v is None else str(v)
