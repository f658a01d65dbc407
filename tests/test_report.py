"""The sweep report: written at the end of a real multirun, equal to what the runs logged,
rebuildable from the sweep dir or the parent run id, tolerant of unfinished points."""

import html
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from PIL import Image

from pipeline.report import page, table
from pipeline.report.table import Figures, Row
from pipeline.sweep.info import SweepInfo
from pipeline.track import RunState, Store

from helpers import Sweep, ok, run_cli, run_pipeline, runs

PNGS = ["throughput_vs_memory.png", "loss.png", "step_time.png"]
METRICS = ["avg_tokens_per_s", "avg_step_time_s", "peak_memory_gib", "final_loss"]


def report_cli(target: str, s: Sweep) -> subprocess.CompletedProcess:
    """`python -m pipeline.report TARGET --outputs-dir DIR` as a user would run it."""
    return ok(
        run_cli([sys.executable, "-m", "pipeline.report", target, "--outputs-dir", str(s.outputs_dir)], 120)
    )


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """report.txt -> {run name: {column: cell}} (names hold no spaces in these tests); its lines on
    the sweep's code (track/provenance.py summary) left out."""
    header, *lines = [line for line in text.strip().splitlines() if "code: " not in line]
    cols = header.split()
    return {cells[0]: dict(zip(cols, cells, strict=True)) for cells in (line.split() for line in lines)}


def assert_valid_png(path: Path) -> None:
    assert path.stat().st_size > 5000, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 200
        assert len(im.convert("RGB").getcolors(1 << 20)) > 50, f"{path} looks blank"


def assert_report_matches_runs(s: Sweep, expected_names: list[str]) -> None:
    client = s.client
    runs = client.search_runs(
        [s.info["experiment_id"]], f"tags.mlflow.parentRunId = '{s.info['parent_run_id']}'"
    )
    assert sorted(r.info.run_name for r in runs) == sorted(expected_names)
    rows = table_rows((s.sweep_dir / "report.txt").read_text())
    page = (s.sweep_dir / "report.html").read_text()
    for r in runs:
        row = rows[r.info.run_name]
        assert row["run_id"] == r.info.run_id and row["state"] == r.info.status
        for key in ("zero", "offload", "precision", "optimizer"):
            assert row[key] == r.data.params[key]
        for key in METRICS:
            logged = r.data.metrics.get(key)
            assert row[key] == ("-" if logged is None else table.fmt(logged)), (key, row, logged)
            assert f"<td>{html.escape(row[key])}</td>" in page
    assert page.count("data:image/png;base64,") == len(PNGS)
    # The sweep's code and versions said once, first; every point ran on it (none flagged).
    code = (s.sweep_dir / "report.txt").read_text().splitlines()[0]
    commit = client.get_run(s.info["parent_run_id"]).data.tags["mlflow.source.git.commit"]
    assert code.startswith(f"code: commit {commit[:10]}") and "torch " in code and "deepspeed " in code
    assert "ran on other code" not in page and html.escape(code) in page
    for name in PNGS:
        assert_valid_png(s.sweep_dir / name)
    logged = {a.path for a in client.list_artifacts(s.info["parent_run_id"], "report")}
    assert {f"report/{n}" for n in PNGS + ["report.html", "report.txt"]} <= logged


def test_pareto_front() -> None:
    def row(
        name: str, tokens_s: float | None, gib: float | None, loss: float | None, state=RunState.FINISHED
    ) -> Row:
        figures = Figures(final_loss=loss, avg_tokens_per_s=tokens_s, peak_memory_gib=gib)
        return Row(name, state, None, figures)

    rows = [
        row("fast", 900.0, 8.0, 4.1),
        row("lean", 300.0, 2.0, 4.1),
        row("worse", 250.0, 3.0, 4.1),
        row("failed", None, None, None, RunState.FAILED),
        row("diverged", 5000.0, 1.0, float("nan")),  # would top the front: never ranked
        row("killed midway", 4000.0, 1.5, 4.3, RunState.KILLED),
    ]
    assert [r.name for r in page.pareto(rows)] == ["lean", "fast"]


@pytest.mark.slow
def test_multirun_end_writes_report(sweep: Sweep) -> None:
    assert f"report: {sweep.sweep_dir / 'report.html'}" in sweep.stdout
    assert_report_matches_runs(sweep, ["zero=stage1", "zero=stage2"])
    metrics = sweep.client.search_runs([sweep.info["experiment_id"]], "params.zero = 'stage1'")[
        0
    ].data.metrics
    assert (
        "system/system_memory_usage_megabytes" in metrics and "system/cpu_utilization_percentage" in metrics
    )


@pytest.mark.slow
@pytest.mark.parametrize("by", ["sweep_dir", "parent_run_id"])
def test_rebuild(sweep: Sweep, by: str) -> None:
    for p in sweep.sweep_dir.glob("report*"):
        p.unlink()
    for name in PNGS:
        (sweep.sweep_dir / name).unlink()
    target = str(sweep.sweep_dir) if by == "sweep_dir" else sweep.info["parent_run_id"]
    proc = report_cli(target, sweep)
    assert f"report: {sweep.sweep_dir / 'report.html'}" in proc.stdout
    assert all(r in proc.stdout for r in ("zero=stage1", "zero=stage2"))
    assert_report_matches_runs(sweep, ["zero=stage1", "zero=stage2"])


@pytest.mark.slow
def test_unfinished_points(sweep: Sweep, tmp_path: Path) -> None:
    """A point still running (loss so far, no summary) and one that failed before logging anything."""
    client = sweep.client
    eid = sweep.info["experiment_id"]
    parent = client.create_run(
        eid, run_name="partial", tags={"zerosweep.sweep_dir": str(tmp_path)}
    ).info.run_id
    running = client.create_run(eid, run_name="zero=stage3", tags={"mlflow.parentRunId": parent}).info.run_id
    failed = client.create_run(
        eid, run_name="zero=stage1,offload=nvme", tags={"mlflow.parentRunId": parent}
    ).info.run_id
    client.log_param(running, "zero", "stage3")
    now = int(time.time() * 1000)
    client.log_batch(running, metrics=[Metric("loss", 5.0 - 0.1 * i, now, i) for i in range(1, 4)])
    client.set_terminated(failed, "FAILED")
    report_cli(parent, sweep)
    rows = table_rows((tmp_path / "report.txt").read_text())
    assert rows["zero=stage3"]["state"] == "RUNNING" and rows["zero=stage3"]["zero"] == "stage3"
    assert rows["zero=stage1,offload=nvme"]["state"] == "FAILED"
    assert all(rows[n][k] == "-" for n in rows for k in METRICS)
    assert_valid_png(tmp_path / "loss.png")
    info = SweepInfo(parent, eid, sweep.client.tracking_uri, [], [])
    assert page.pareto(table.rows(Store(info.tracking_uri), info)) == []


def test_a_sweep_whose_end_cannot_be_recorded_exits_1_and_still_prints_its_table(tmp_path: Path) -> None:
    """Its report cannot be written (a directory is in the way): Hydra would turn the error into a
    warning and exit 0; the sweep says what failed, prints its table first and exits 1, its parent
    run already closed."""
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "report.html").mkdir(parents=True)
    outputs = tmp_path / "outputs"
    args = ("-m", f"hydra.sweep.dir={sweep_dir}", "trainer.max_steps=2", "trainer.save_model=false")
    result = run_pipeline(outputs, *args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: the sweep's end could not be recorded: IsADirectoryError" in result.stderr
    assert f"== sweep {sweep_dir}: 1 points" in result.stdout
    (parent,) = [r for r in runs(outputs) if r.data.tags.get("zerosweep.role") == "sweep"]
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize("target", ["a sweep dir that is not", "a run id that is not"])
def test_a_wrong_target_is_one_line(sweep: Sweep, target: str, tmp_path: Path) -> None:
    """Not a sweep dir, not a run of the store: one line naming it, exit 2, no store made anywhere."""
    for outputs in (sweep.outputs_dir, tmp_path / "empty"):
        what = str(tmp_path / "nowhere") if target.startswith("a sweep dir") else "0123456789abcdef"
        cmd = [sys.executable, "-m", "pipeline.report", what, "--outputs-dir", str(outputs)]
        result = run_cli(cmd, timeout=120)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
        assert result.stderr.startswith(f"error: target: {what} is not a sweep dir (with sweep.json), and ")
    assert not (tmp_path / "empty").exists()
