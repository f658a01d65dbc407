"""One real 2-point sweep shared by the report and UI tests (training is the slow part)."""
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sweep:
    outputs_dir: Path
    sweep_dir: Path
    info: Dict[str, Any]
    stdout: str

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.outputs_dir / 'mlflow.db'}"


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a module of the pipeline as a user would, from the repository root."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    out = tmp_path_factory.mktemp("outputs")
    proc = run_cli("pipeline", "-m", "zero=stage1,stage2", "trainer.max_steps=6", f"outputs_dir={out}")
    (sweep_dir,) = [p.parent for p in out.glob("sweeps/*/sweep.json")]
    return Sweep(out, sweep_dir, json.loads((sweep_dir / "sweep.json").read_text()), proc.stdout)
