"""Fixtures shared by the test modules (helpers live in helpers.py)."""

import json
from pathlib import Path

import pytest

from helpers import Own, Sweep, make_own, ok, run_pipeline


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
