"""A sweep's report: every point's numbers and the plots that make the choice obvious.

Built only from what the runs logged in MLflow, so it can be rebuilt at any time, for a sweep
still running or partly failed: missing metrics show as '-', runs without history are left
out of the plots. Written to the sweep dir (report.html + PNGs) and to the parent run.

    python -m pipeline.report <sweep dir | parent run id> [--outputs-dir DIR | --tracking-uri URI]
"""
import argparse
import base64
import html
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline import sweep, track  # noqa: E402

TABLE = ["name", "zero", "offload", "precision", "optimizer", "avg_tokens_per_s", "avg_step_time_s",
         "peak_memory_gib", "final_loss", "state", "run_id"]


def pareto(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Points no other point beats on both throughput (higher) and peak memory (lower)."""
    pts = [r for r in rows if r.get("avg_tokens_per_s") is not None and r.get("peak_memory_gib") is not None]

    def beaten(r: Dict[str, Any]) -> bool:
        return any(o["avg_tokens_per_s"] >= r["avg_tokens_per_s"] and o["peak_memory_gib"] <= r["peak_memory_gib"]
                   and (o["avg_tokens_per_s"], o["peak_memory_gib"]) != (r["avg_tokens_per_s"], r["peak_memory_gib"])
                   for o in pts)

    return sorted((r for r in pts if not beaten(r)), key=lambda r: r["peak_memory_gib"])


def histories(client: MlflowClient, rows: List[Dict[str, Any]], key: str) -> Dict[str, List[Any]]:
    """Per-step values of one metric by run name, skipping runs that logged none yet."""
    out = {}
    for r in rows:
        hist = sorted(client.get_metric_history(r["run_id"], key), key=lambda m: m.step)
        if hist:
            out[r["name"]] = hist
    return out


def plot_pareto(rows: List[Dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [r for r in rows if r.get("avg_tokens_per_s") is not None and r.get("peak_memory_gib") is not None]
    for r in pts:
        ax.scatter(r["peak_memory_gib"], r["avg_tokens_per_s"], color="tab:blue")
        ax.annotate(r["name"], (r["peak_memory_gib"], r["avg_tokens_per_s"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    front = pareto(rows)
    if front:
        ax.plot([r["peak_memory_gib"] for r in front], [r["avg_tokens_per_s"] for r in front], "o--",
                color="tab:red", mfc="none", ms=12, label="Pareto front")
        ax.legend()
    ax.set(xlabel="peak memory (GiB)", ylabel="throughput (tokens/s)", title="Throughput vs peak memory")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss(loss: Dict[str, List[Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]  # equal curves (same seed, different ZeRO stage) must stay visible
    for i, (name, hist) in enumerate(loss.items()):
        ax.plot([m.step for m in hist], [m.value for m in hist], styles[i % len(styles)], marker=".", label=name)
    if loss:
        ax.legend(fontsize=8)
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_step_time(step_time: Dict[str, List[Any]], path: Path) -> Path:
    """Distribution of measured step times per point (the runs log whole steps, not their parts)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if step_time:
        ax.boxplot([[m.value for m in h] for h in step_time.values()], showmeans=True)
        ax.set_xticks(range(1, len(step_time) + 1), list(step_time), rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="step time (s)", title="Time per step (whole steps: the runs log no phase breakdown)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_html(title: str, rows: List[Dict[str, Any]], pngs: List[Path]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(sweep.fmt(r.get(c)))}</td>" for c in TABLE) + "</tr>"
                   for r in rows)
    imgs = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   for p in pngs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>{imgs}</body></html>\n")


def write(info: Dict[str, Any], sweep_dir: str) -> Path:
    """Build the report of the sweep described by info (sweep.json's keys); returns report.html."""
    uri, parent = info["tracking_uri"], info["parent_run_id"]
    client = MlflowClient(uri)
    rows = sweep.child_rows(uri, info["experiment_id"], parent)
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = [plot_pareto(rows, out / "throughput_vs_memory.png"),
            plot_loss(histories(client, rows, "loss"), out / "loss.png"),
            plot_step_time(histories(client, rows, "step_time_s"), out / "step_time.png")]
    (out / "report.txt").write_text(sweep.format_table(rows, TABLE) + "\n")
    page = out / "report.html"
    page.write_text(render_html(f"{client.get_run(parent).info.run_name} ({len(rows)} points)", rows, pngs))
    for path in [page, out / "report.txt", *pngs]:
        client.log_artifact(parent, str(path), "report")
    return page


def resolve(target: str, uri: str) -> tuple[Dict[str, Any], str]:
    """A sweep dir (its sweep.json) or a parent run id (its sweep_dir tag) -> (info, sweep dir)."""
    info = sweep.sweep_info(target) if Path(target).is_dir() else None
    if info is not None:
        return info, target
    run = MlflowClient(uri).get_run(target)
    sweep_dir = run.data.tags.get("zerosweep.sweep_dir") or "."
    return {"tracking_uri": uri, "experiment_id": run.info.experiment_id, "parent_run_id": target}, sweep_dir


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    ap.add_argument("target", help="sweep dir (holds sweep.json) or MLflow parent run id")
    ap.add_argument("--outputs-dir", default="outputs", help="where the default sqlite store lives")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store, if not the default one")
    args = ap.parse_args(argv)
    info, sweep_dir = resolve(args.target, track.store_uri(args.outputs_dir, args.tracking_uri))
    rows = sweep.child_rows(info["tracking_uri"], info["experiment_id"], info["parent_run_id"])
    print(sweep.format_table(rows, TABLE))
    print(f"report: {write(info, sweep_dir)}")


if __name__ == "__main__":
    main()
