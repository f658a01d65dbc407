"""A sweep's report: every point's numbers and the plots that make the choice obvious.

Built only from what the runs logged in MLflow, so it can be rebuilt at any time, for a sweep
still running or partly failed: missing metrics show as '-', runs without history are left
out of the plots. Written to the sweep dir (report.html + PNGs) and to the parent run;
`python -m pipeline.report` (__main__.py) rebuilds it.
"""

import base64
import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from pipeline.report import table  # noqa: E402
from pipeline.report.table import Row  # noqa: E402
from pipeline.sweep.info import SweepInfo  # noqa: E402
from pipeline.track import RunState, Store, provenance  # noqa: E402

# Every point's choices and figures, for the page and report.txt.
REPORT = table.View(
    (
        table.NAME,
        *table.GROUPS,
        table.TOKENS_PER_S,
        table.STEP_TIME,
        table.PEAK_MEMORY,
        table.FINAL_LOSS,
        table.STATE,
        table.RUN_ID,
    )
)
History = dict[str, list[tuple[int, float]]]


def pareto(rows: list[Row]) -> list[Row]:
    """Points no other point beats on both throughput (higher) and peak memory (lower), among those
    that trained to the end with a finite loss (a diverged run is never ranked)."""
    pts = [r for r in rows if _rankable(r)]

    def beaten(r: Row) -> bool:
        mine = (r.figures.avg_tokens_per_s, r.figures.peak_memory_gib)
        return any(
            o.figures.avg_tokens_per_s >= mine[0]
            and o.figures.peak_memory_gib <= mine[1]
            and (o.figures.avg_tokens_per_s, o.figures.peak_memory_gib) != mine
            for o in pts
        )

    return sorted((r for r in pts if not beaten(r)), key=lambda r: r.figures.peak_memory_gib)


def _rankable(row: Row) -> bool:
    f = row.figures
    figures = [f.avg_tokens_per_s, f.peak_memory_gib, f.final_loss]
    return row.state == RunState.FINISHED and all(v is not None and math.isfinite(v) for v in figures)


def histories(store: Store, rows: list[Row], key: str) -> History:
    """Per-step values of one metric by run name, skipping runs that logged none yet."""
    out = {}
    for r in rows:
        hist = store.history(r.run_id, key)
        if hist:
            out[r.name] = hist
    return out


def plot_pareto(rows: list[Row], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        f = r.figures
        if f.avg_tokens_per_s is None or f.peak_memory_gib is None:
            continue
        ax.scatter(f.peak_memory_gib, f.avg_tokens_per_s, color="tab:blue")
        ax.annotate(
            r.name,
            (f.peak_memory_gib, f.avg_tokens_per_s),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = pareto(rows)
    if front:
        ax.plot(
            [r.figures.peak_memory_gib for r in front],
            [r.figures.avg_tokens_per_s for r in front],
            "o--",
            color="tab:red",
            mfc="none",
            ms=12,
            label="Pareto front",
        )
        ax.legend()
    ax.set(xlabel="peak memory (GiB)", ylabel="throughput (tokens/s)", title="Throughput vs peak memory")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss(loss: History, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]  # equal curves (same seed, different ZeRO stage) must stay visible
    for i, (name, hist) in enumerate(loss.items()):
        steps, values = zip(*hist, strict=True)
        ax.plot(steps, values, styles[i % len(styles)], marker=".", label=name)
    if loss:
        ax.legend(fontsize=8)
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_step_time(step_time: History, path: Path) -> Path:
    """Distribution of measured step times per point (the runs log whole steps, not their parts)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if step_time:
        ax.boxplot([[value for _, value in h] for h in step_time.values()], showmeans=True)
        ax.set_xticks(range(1, len(step_time) + 1), list(step_time), rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="step time (s)", title="Time per step (whole steps: the runs log no phase breakdown)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_html(title: str, code: str, rows: list[Row], pngs: list[Path]) -> str:
    headers, cells = REPORT.cells(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    imgs = "".join(
        f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in pngs
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(code).replace(chr(10), '<br>')}</p>"
        f"<table><tr>{head}</tr>{body}</table>{imgs}</body></html>\n"
    )


def write(store: Store, info: SweepInfo, sweep_dir: str | Path) -> Path:
    """Build the report of the sweep info describes; returns report.html."""
    rows = table.rows(store, info)
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = [
        plot_pareto(rows, out / "throughput_vs_memory.png"),
        plot_loss(histories(store, rows, "loss"), out / "loss.png"),
        plot_step_time(histories(store, rows, "step_time_s"), out / "step_time.png"),
    ]
    parent = store.get(info.parent_run_id)
    points = {row.name: store.get(row.run_id).tags for row in rows if row.run_id}
    code = provenance.summary(parent.tags, points)
    (out / "report.txt").write_text(f"{code}\n{REPORT.text(rows)}\n")
    page = out / "report.html"
    title = f"{parent.name} ({len(rows)} points)"
    page.write_text(render_html(title, code, rows, pngs))
    store.log_files(info.parent_run_id, [page, out / "report.txt", *pngs], "report")
    return page
