"""Test helpers: run the real CLI as a user would, and read what landed in MLflow."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.track import store_uri

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """This environment without MLflow's variables (MLFLOW_RUN_ID would override the nesting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def pipeline_cmd(outputs: Path, *args: str, module: str = "pipeline") -> list[str]:
    """`python -m pipeline [-m] outputs_dir=<outputs> ARGS...`."""
    flags = [a for a in args if a.startswith("-")]  # Hydra's parser wants -m before the overrides
    return [
        sys.executable,
        "-m",
        module,
        *flags,
        f"outputs_dir={outputs}",
        *(a for a in args if a not in flags),
    ]


def run_pipeline(
    outputs: Path, *args: str, module: str = "pipeline", timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run the CLI from the project root to its end."""
    cmd = pipeline_cmd(outputs, *args, module=module)
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    out, err = result.stdout[-4000:], result.stderr[-6000:]
    assert result.returncode == 0, f"exit {result.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
    return result


def wait_for(what: str, found: Callable[[], object], timeout: float = 240) -> Any:
    """Polls found() until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def mlflow_client(outputs: Path) -> MlflowClient:
    """A client of the store the pipeline made under outputs (its own URI rule)."""
    return MlflowClient(store_uri(outputs))


def runs(outputs: Path) -> list[Run]:
    """Every run of the project's experiment, oldest first."""
    client = mlflow_client(outputs)
    exp = client.get_experiment_by_name("zerosweep")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def loss_steps(outputs: Path, run_id: str) -> list[int]:
    return [m.step for m in mlflow_client(outputs).get_metric_history(run_id, "loss")]


def artifact_text(outputs: Path, run_id: str, path: str, into: Path) -> str:
    return Path(mlflow_client(outputs).download_artifacts(run_id, path, str(into))).read_text()


@dataclass
class Sweep:
    """A finished 2-point sweep (zero=stage1,stage2): its store, sweep dir, sweep.json and CLI output."""

    outputs_dir: Path
    sweep_dir: Path
    info: dict[str, Any]
    stdout: str

    @property
    def client(self) -> MlflowClient:
        return mlflow_client(self.outputs_dir)
