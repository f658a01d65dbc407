"""Shared helpers: run the real CLI as a user would, and read what landed in MLflow."""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def run_pipeline(outputs: Path, *args: str, module: str = "pipeline", timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m pipeline outputs_dir=<outputs> ARGS...` from the project root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    flags = [a for a in args if a.startswith("-")]  # Hydra's parser wants -m before the overrides
    cmd = [sys.executable, "-m", module, *flags, f"outputs_dir={outputs}", *(a for a in args if a not in flags)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    return result


def wait_for(what: str, found: Callable[[], Optional[object]], timeout: float = 240) -> object:
    """Polls found() until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def mlflow_client(outputs: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")


def runs(outputs: Path) -> List:
    """Every run of the project's experiment, oldest first."""
    client = mlflow_client(outputs)
    exp = client.get_experiment_by_name("zerosweep")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@dataclass
class Sweep:
    """A finished 2-point sweep (zero=stage1,stage2): its store, sweep dir, sweep.json and CLI output."""
    outputs_dir: Path
    sweep_dir: Path
    info: Dict[str, Any]
    stdout: str

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.outputs_dir / 'mlflow.db'}"


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Shared by the report and UI tests: training is the slow part."""
    out = tmp_path_factory.mktemp("sweep") / "outputs"
    result = ok(run_pipeline(out, "-m", "zero=stage1,stage2", "trainer.max_steps=6"))
    (sweep_dir,) = [p.parent for p in out.glob("sweeps/*/sweep.json")]
    return Sweep(out, sweep_dir, json.loads((sweep_dir / "sweep.json").read_text()), result.stdout)
