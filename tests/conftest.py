"""Fixtures shared by the test modules (helpers live in helpers.py)."""

import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

from helpers import SAMPLED, MlflowServer, Own, Sweep, make_own, ok, run_pipeline

# OpenMP threads that wait sleep instead of spinning, in the tests and every process they start (the
# CLI, its ranks, Slurm's jobs): with two or more trainings at once on 2 cores (a sweep's Slurm jobs,
# two ranks), spinning threads take the cores from the working ones. Measured, 3 tiny runs at once:
# 3.5 s a step (60 ms alone), 0.14 s with PASSIVE; alone, the same run time either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _no_fsync() -> None:
    """Every process the tests start (the CLI, its ranks, Slurm's daemons and jobs, MLflow's server,
    MariaDB) writes without waiting for the disk: Debian's libeatmydata turns fsync and O_SYNC into
    no-ops, what only a power cut would tell apart. A fresh MLflow store's migrations alone fsync
    hundreds of times (2.5-8 s on this machine's disk while the other worker writes, 2 s without),
    and each logged batch and Slurm's accounting once more. ZEROSWEEP_TEST_FSYNC=1 keeps them."""
    lib = "/usr/lib/x86_64-linux-gnu/libeatmydata.so"
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get("ZEROSWEEP_TEST_FSYNC") != "1" and os.path.exists(lib) and lib not in preload:
        os.environ["LD_PRELOAD"] = f"{lib} {preload}".strip()


_no_fsync()


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a fresh machine DeepSpeed compiles its CPU ops (~7 min of CPU on 2 cores) inside the first
    test that needs each. When tests train, the ops are built from the start instead, beside the
    tests (scripts/build-ops.py; make test starts those that need no Debian package before pytest):
    a test needing one waits on torch's build lock for the rest of that op's build."""
    trains = any(item.get_closest_marker("slow") for item in session.items)
    if trains and not hasattr(session.config, "workerinput"):
        _build_ops(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """Under xdist the controller collects nothing: it builds the ops once, for all its workers."""
    if ids:
        _build_ops(node.config)


def _build_ops(config: pytest.Config) -> None:
    if _BUILD in config.stash or config.option.collectonly:
        return
    log = open(config.rootpath / "outputs" / "deepspeed-ops-build.log", "w")  # noqa: SIM115
    config.stash[_BUILD] = subprocess.Popen(
        [sys.executable, "scripts/build-ops.py"], stdout=log, stderr=subprocess.STDOUT, cwd=config.rootpath
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """An unfinished build is interrupted, never killed: torch releases its build lock on the way out
    (a lock left behind would make every later load wait forever)."""
    build = config.stash.get(_BUILD, None)
    if build is not None and build.poll() is None:
        build.send_signal(signal.SIGINT)
        build.wait()


T = TypeVar("T")
_BUILD = pytest.StashKey[subprocess.Popen]()


# The files that take longest, longest first (as measured by --durations), the Slurm file ahead: under
# `-n 2 --dist loadfile` each file goes to whichever worker is free next, so the short files fill in
# at the end and both workers finish together. The Slurm file's waits on the cluster leave CPU to the
# other worker. Right after it, the files that train nothing: on a fresh clone the other worker runs
# them while DeepSpeed's first CPU ops compile, which any training would wait for (~100 s of work).
LONGEST_FIRST = [
    "test_slurm.py",
    "test_memory.py",
    "test_ds_json.py",
    "test_compose.py",
    "test_fit.py",
    "test_watchdog.py",
    "test_layout.py",
    "test_tracking.py",
    "test_sweep_survives.py",
    "test_train.py",
    "test_resume_gpu_count.py",
    "test_peft.py",
]


def pytest_configure(config: pytest.Config) -> None:
    """xdist hands out files in the collection's order, not its own (most tests first, which put the
    long files of few tests last, one worker left with them at the end)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Shared by the report, UI and provenance tests (and their xdist workers): training is the slow part."""

    def train(root: Path) -> Sweep:
        out = root / "outputs"
        result = ok(run_pipeline(out, "-m", "zero=stage1,stage2", "trainer.max_steps=6", SAMPLED))
        (sweep_dir,) = [p.parent for p in out.glob("sweeps/*/sweep.json")]
        return Sweep(out, sweep_dir, json.loads((sweep_dir / "sweep.json").read_text()), result.stdout)

    return once_for_all_workers(tmp_path_factory, "sweep", train)


def once_for_all_workers(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], T]) -> T:
    """A session fixture's value made once for all of xdist's workers, as its docs advise: the first
    worker to ask makes it, under a file lock in their common temp dir; the others read it back."""
    root = factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # each worker's basetemp sits in the session's
    kept = root / f"{name}.pickle"
    with FileLock(root / f"{name}.lock"):
        if kept.exists():
            return pickle.loads(kept.read_bytes())
        (root / name).mkdir()
        value = make(root / name)
        kept.write_bytes(pickle.dumps(value))
        return value


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
