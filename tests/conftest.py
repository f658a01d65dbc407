"""Fixtures shared by the test modules (helpers live in helpers.py), and how `make test` spreads
the tests over pytest-xdist's workers (`-n 3 --dist loadgroup`, Makefile)."""

import json
import os
from pathlib import Path

import pytest

from helpers import Own, Sweep, make_own, ok, run_pipeline

# OpenMP threads that wait sleep instead of spinning, in the tests and every process they start (the
# CLI, its ranks, Slurm's jobs): with two or more trainings at once on 2 cores (xdist's workers, or
# anyone's), spinning threads take the cores from the working ones. Measured, 3 tiny runs at once:
# 3.5 s a step (60 ms alone), 0.14 s with PASSIVE; alone, the same run time either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Each xdist worker is a pytest session of its own: a fixture wider than a test is built once per
# worker that uses it. The tests that share one of these run on one worker, one after another: the
# fixture is built once, and the one local Slurm is never driven by two workers at once (its tests
# count its jobs and its queue; its fixture stops it at the end).
SHARED = {
    "local_slurm": "slurm",  # tests/test_slurm.py (autouse)
    "sweep": "sweep",  # a trained 2-point sweep: test_report.py, test_ui.py
    "six_point_sweep": "six_point_sweep",  # test_train.py
    "finetuned": "finetuned",  # test_own_model.py
    "searched": "searched",  # test_search.py
}
# The same groups by test id, for xdist's scheduler, which sees ids only. (xdist's own xdist_group
# mark reaches it as a suffix of the id, which pytest 9.2's ids no longer take: pytest-xdist#1386.)
# A test id is looked up as "file::test" (parameters left out), then as "file".
GROUPS = {
    "slurm": ["tests/test_slurm.py"],
    "sweep": [
        "tests/test_report.py::test_multirun_end_writes_report",
        "tests/test_report.py::test_rebuild",
        "tests/test_report.py::test_unfinished_points",
        "tests/test_ui.py",
    ],
    "six_point_sweep": [
        "tests/test_train.py::test_sweep_is_one_parent_with_a_child_per_point",
        "tests/test_train.py::test_losses_are_equal_across_stages_and_offload",
        "tests/test_train.py::test_offload_json_matches_the_point",
    ],
    "finetuned": [
        "tests/test_own_model.py::test_losses_agree_across_stages_and_eval_is_logged",
        "tests/test_own_model.py::test_a_sweep_tokenizes_once",
        "tests/test_own_model.py::test_saved_model_reloads_with_the_runs_eval_loss",
    ],
    "searched": [
        "tests/test_search.py::test_points_that_cannot_fit_are_never_started",
        "tests/test_search.py::test_an_interrupted_search_carries_on_without_repeating_finished_trials",
        "tests/test_search.py::test_the_winners_recipe_trains",
    ],
}
GROUP_OF = {test: group for group, tests in GROUPS.items() for test in tests}


def group_of(nodeid: str) -> str | None:
    path, _, name = nodeid.partition("::")
    return GROUP_OF.get(f"{path}::{name.split('[')[0]}") or GROUP_OF.get(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items if "PYTEST_XDIST_WORKER" in os.environ else ():  # where groups matter
        shared = {group for fixture, group in SHARED.items() if fixture in getattr(item, "fixturenames", ())}
        if shared and shared != {group_of(item.nodeid)}:
            raise pytest.UsageError(
                f"{item.nodeid} uses a shared fixture ({', '.join(sorted(shared))}): "
                "add it to GROUPS in tests/conftest.py"
            )
    # The trainings first (a stable sort: files and tests keep their order otherwise), so that the
    # long ones start early and the last minutes are not one worker training alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup: xdist's, with GROUPS as well (each group goes to one worker as a whole;
    groups of more tests are handed out first)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SharedFixtures(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or super()._split_scope(nodeid)

    return SharedFixtures(config, log)


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
