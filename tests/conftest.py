"""Fixtures shared by the test modules (helpers live in helpers.py)."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import MlflowServer, Own, Sweep, make_own, ok, run_pipeline

# OpenMP threads that wait sleep instead of spinning, in the tests and every process they start (the
# CLI, its ranks, Slurm's jobs): with two or more trainings at once on 2 cores (a sweep's Slurm jobs,
# two ranks), spinning threads take the cores from the working ones. Measured, 3 tiny runs at once:
# 3.5 s a step (60 ms alone), 0.14 s with PASSIVE; alone, the same run time either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Shared by the report and UI tests: training is the slow part."""
    out = tmp_path_factory.mktemp("sweep") / "outputs"
    result = ok(run_pipeline(out, "-m", "zero=stage1,stage2", "trainer.max_steps=6"))
    (sweep_dir,) = [p.parent for p in out.glob("sweeps/*/sweep.json")]
    return Sweep(out, sweep_dir, json.loads((sweep_dir / "sweep.json").read_text()), result.stdout)


@pytest.fixture(scope="session")
def own(tmp_path_factory: pytest.TempPathFactory) -> Own:
    """A user's own small models and data files (helpers.make_own): built once, no download."""
    return make_own(tmp_path_factory.mktemp("own"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A team's MLflow server (helpers.MlflowServer), shared: each test logs to an experiment of its own."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()
