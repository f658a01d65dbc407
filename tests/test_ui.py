"""The MLflow UI as users open it: `python -m pipeline.ui` on loopback, pages rendered by headless
Chromium (Debian's), and the same runs and params through MLflow's REST API."""

import html
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, Sweep, free_port, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
    "--window-size=1400,1200",
]
KEPT = ROOT / "outputs" / "test-artifacts"


@pytest.fixture(scope="module")
def ui(sweep: Sweep) -> Iterator[dict[str, str]]:
    """The UI command's printed links, while it serves; stopped with Ctrl-C as a user would. It is
    started as from a background job (or nohup), with SIGINT inherited ignored: Ctrl-C must still
    stop it and its mlflow server."""
    port, store = str(free_port()), str(sweep.outputs_dir)
    cmd = [sys.executable, "-m", "pipeline.ui", "--port", port, "--outputs-dir", store]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    links: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while "compare" not in links and time.monotonic() < deadline and proc.poll() is None:
        m = re.match(r"(\w+):\s+(http\S+)", proc.stdout.readline())
        if m:
            links[m.group(1)] = m.group(2)
    try:
        assert "compare" in links, f"UI printed no comparison link: {links}"
        links["base"] = links["runs"].split("/#/")[0]
        yield links
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) is not None
        if "base" in links:
            with pytest.raises(OSError):  # its mlflow server is gone too
                urllib.request.urlopen(f"{links['base']}/health", timeout=5)


def api(base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        method="POST" if body else "GET",
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def browse(url: str, tmp_path: Path, name: str) -> str:
    """The rendered DOM of a page; its screenshot kept under tmp_path and outputs/test-artifacts/."""

    def chromium(*args: str, profile: str) -> str:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    dom = chromium("--dump-dom", profile=f"{name}-dom")
    shot = tmp_path / f"{name}.png"
    chromium(f"--screenshot={shot}", profile=f"{name}-shot")
    assert shot.stat().st_size > 20000
    KEPT.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, KEPT / shot.name)
    return dom


def test_rest_api_shows_sweep(sweep: Sweep, ui: dict[str, str]) -> None:
    exp = api(ui["base"], "experiments/get-by-name?experiment_name=zerosweep")["experiment"]
    assert exp["experiment_id"] == sweep.info["experiment_id"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
    runs = api(
        ui["base"],
        "runs/search",
        {
            "experiment_ids": [exp["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{sweep.info['parent_run_id']}'",
        },
    )["runs"]
    params = {r["info"]["run_name"]: {p["key"]: p["value"] for p in r["data"]["params"]} for r in runs}
    assert params["zero=stage1"]["zero"] == "stage1" and params["zero=stage2"]["zero"] == "stage2"
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    assert all(run["info"]["run_id"] in ui["compare"] for run in runs)


def test_browser_shows_runs_and_params(sweep: Sweep, ui: dict[str, str], tmp_path: Path) -> None:
    assert f"/#/experiments/{sweep.info['experiment_id']}/runs?" in ui["runs"]
    runs_page = browse(ui["runs"], tmp_path, "ui-runs")
    parent = sweep.client.get_run(sweep.info["parent_run_id"]).info.run_name
    assert html.escape(parent, quote=False) in runs_page, parent
    shown = re.search(r"<strong>(\d+)</strong> matching runs", runs_page)
    assert shown and int(shown.group(1)) >= 3, "the sweep and its 2 points are not all listed"
    assert ">Models<" in runs_page and ">Judges<" not in runs_page, "UI is in GenAI mode, not Model training"
    compare = browse(ui["compare"], tmp_path, "ui-compare")
    for name, zero in (("zero=stage1", "stage1"), ("zero=stage2", "stage2")):
        assert f">{name}<" in compare and f">{zero}<" in compare
    for param in ("optimizer.lr", "precision", "offload", "trainer.max_steps"):
        assert f">{param}<" in compare, param


def test_a_taken_port_is_refused_in_one_line(tmp_path: Path) -> None:
    """Another server already on the port would answer the UI's health check: its links would be to
    another store. Refused instead, naming the port, exit 2."""
    port = str(free_port())
    other = subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for("the other server", lambda: _answers(f"http://127.0.0.1:{port}/"), timeout=30)
        cmd = [sys.executable, "-m", "pipeline.ui", "--port", port, "--outputs-dir", str(tmp_path)]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        other.kill()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --port: {port} is taken (Address already in use). Fix: give a free port, --port N"
    ]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
