"""Sweeps that survive: rerunning a sweep whose driver died carries on in it, however its overrides
are ordered, and widened (finished points are not trained again, a stopped one resumes from its
newest checkpoint); sweep.retries tries a point that fails while training again, each try a run of
its own."""

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helpers import (
    Own,
    artifact_text,
    loss_steps,
    mlflow_client,
    nan_model,
    ok,
    pipeline_cmd,
    run_pipeline,
    runs,
    start_cli,
    wait_for,
)

pytestmark = pytest.mark.slow
# Point 1 is SIGKILLed once its checkpoint of step 20 is complete: LONG steps leave it 100 more to
# be killed in (several seconds, checkpoints included) and the rerun 100 or so to carry on with,
# from the checkpoint before its newest (damaged on purpose).
LONG = 120
SWEEP = ("-m", f"trainer.max_steps=3,{LONG}", "trainer.save_steps=10")


def test_a_killed_sweep_rerun_carries_on_where_it_stopped(outputs):
    driver = start_cli(
        pipeline_cmd(outputs, *SWEEP),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for("point 1's checkpoint of step 20 or later", lambda: _checkpoints(outputs, "1", 20), timeout=300)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies: no handler, no table, nothing closed
    driver.wait()
    # And its newest checkpoint is damaged on disk: the rerun names the file and takes the one before.
    *_, before, newest = sorted(_checkpoints(outputs, "1", 0), key=lambda p: int(p.parent.name.split("-")[1]))
    weights = newest.parent / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)

    # The same sweep typed in another order, and widened by a point: it carries on all the same.
    result = ok(run_pipeline(outputs, "-m", "trainer.save_steps=10", f"trainer.max_steps={LONG},3,4"))
    assert "point trainer.max_steps=3 FINISHED before" in result.stdout
    (parent,) = [r for r in runs(outputs) if r.data.tags.get("zerosweep.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    carried_on = f"carrying on in sweep {parent.info.run_id} (sweep.resume=auto): its finished points stay"
    assert f"{carried_on}, 1 point added" in result.stdout
    by_name: dict[str, list] = {}
    for run in runs(outputs):
        by_name.setdefault(run.info.run_name, []).append(run)
    (short,) = by_name["trainer.max_steps=3"]  # not trained again
    (added,) = by_name["trainer.max_steps=4"]
    assert added.info.status == "FINISHED"
    stopped, carried = by_name[f"trainer.max_steps={LONG}"]
    assert (
        short.info.status == "FINISHED"
        and stopped.info.status == "KILLED"
        and carried.info.status == "FINISHED"
    )
    assert carried.data.tags["zerosweep.carries_on"] == stopped.info.run_id
    resumed = int(carried.data.metrics["resumed_from_step"])
    assert f"checkpoint-{resumed}" == before.parent.name and carried.data.metrics["steps"] == LONG
    assert f"checkpoint {newest.parent} is broken (model.safetensors: " in result.stderr
    assert loss_steps(outputs, carried.info.run_id) == list(range(resumed + 1, LONG + 1))  # the curve goes on
    # Steps buffered for the store were flushed with checkpoint-10, seconds before the SIGKILL.
    assert set(range(1, 11)) <= set(loss_steps(outputs, stopped.info.run_id))
    table = {
        line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("trainer.max_steps=")
    }
    assert table["trainer.max_steps=3"].rstrip().endswith("earlier run")
    assert f"carried on from step {resumed}, try 2" in table[f"trainer.max_steps={LONG}"]


def _checkpoints(outputs: Path, point: str, least: int) -> list[Path]:
    """The point's complete checkpoints (the Trainer writes trainer_state.json last) of step >= least."""
    done = outputs.glob(f"sweeps/*/{point}/checkpoints/checkpoint-*/trainer_state.json")
    return [p for p in done if int(p.parent.name.split("-")[1]) >= least]


def test_retries_try_a_failing_point_again_and_the_last_try_decides(own: Own, outputs: Path, tmp_path: Path):
    broken = nan_model(own, tmp_path)  # fails while training, every time
    args = ["model=hf", f"model.name_or_path={broken}", "data=files", f"data.train_files={own.train}"]
    result = run_pipeline(
        outputs, "-m", *args, "trainer.max_steps=3", "sweep.retries=2", "zero=stage1,stage2"
    )
    assert result.returncode == 1
    points = [r for r in runs(outputs) if "mlflow.parentRunId" in r.data.tags]
    assert len(points) == 6 and {r.info.status for r in points} == {"FAILED"}
    for zero in ("stage1", "stage2"):
        tries = sorted(int(r.data.tags["zerosweep.attempt"]) for r in points if r.data.params["zero"] == zero)
        assert tries == [1, 2, 3]
    assert result.stderr.count("try 3 of 3") == 2 and "try 3" in result.stdout  # the table says so


def test_a_rank_that_stops_stepping_fails_its_point_as_a_hang_with_every_ranks_stack(
    outputs: Path, tmp_path: Path
):
    """Rank 0 stops stepping after step 3 (test hook): alone, in the job's own process; of two, its
    peer waits in the next collective. Each point ends FAILED as a hang and the sweep goes on."""
    result = run_pipeline(
        outputs,
        "-m",
        "trainer.nproc_per_node=1,2",
        "trainer.max_steps=50",
        "trainer.hang_timeout_s=8",
        env={"ZEROSWEEP_TEST_HANG_AT_STEP": "0:3"},
    )
    assert result.returncode == 1
    assert result.stderr.count("FAILED: Hung: hang: rank") == 2
    client = mlflow_client(outputs)
    points = [r for r in runs(outputs) if "mlflow.parentRunId" in r.data.tags]
    assert len(points) == 2 and {r.info.status for r in points} == {"FAILED"}
    for run in points:
        ranks = int(run.data.params["trainer.nproc_per_node"])
        stacks = artifact_text(outputs, run.info.run_id, "hang.txt", tmp_path / run.info.run_id)
        assert [f"== hang-rank{r}.txt" in stacks for r in range(ranks)] == [True] * ranks
        assert "in on_step_end" in stacks  # where rank 0 stopped
        assert "hang: rank" in artifact_text(outputs, run.info.run_id, "error.txt", tmp_path / "e")
        last_step = max(m.timestamp for m in client.get_metric_history(run.info.run_id, "loss"))
        assert (run.info.end_time - last_step) / 1000 < 8 + 30  # caught within the timeout + a margin


def test_a_rank_killed_outright_fails_its_point_and_the_sweep_goes_on(outputs: Path):
    """SIGKILL of one rank of a 2-rank point: the point ends FAILED saying so, with every step rank 0
    printed in its run (its buffered metrics flushed when the launcher stops it), the next point
    trains, and no run is left RUNNING."""
    driver = start_cli(
        pipeline_cmd(outputs, "-m", "trainer.nproc_per_node=2", "trainer.max_steps=400,3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("point 0 at its third step", lambda: _training(outputs, steps=3), timeout=300)
    # Without a GPU the ranks fork from the job's forkserver (not its resource tracker).
    (server,) = [p for p in psutil.Process(driver.pid).children() if "forkserver" in " ".join(p.cmdline())]
    ranks = server.children()
    assert len(ranks) == 2
    rank1 = max(ranks, key=lambda p: (p.create_time(), p.pid))  # the launcher starts rank 0 first
    os.kill(rank1.pid, signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stderr[-3000:]
    states = {r.info.run_name: r.info.status for r in runs(outputs)}
    assert "RUNNING" not in states.values() and len(states) == 3
    assert states["trainer.max_steps=400"] == "FAILED" and states["trainer.max_steps=3"] == "FINISHED"
    (killed,) = [r for r in runs(outputs) if r.info.run_name == "trainer.max_steps=400"]
    # Last in its error, whichever failure the launcher saw first (rank 0 may fail on the broken link).
    error = artifact_text(outputs, killed.info.run_id, "error.txt", outputs.parent / "e")
    last = error.rstrip().splitlines()[-1]
    assert "ranks failed: rank 1 died: killed by SIGKILL" in last, error[-3000:]
    printed = stdout.count("{'loss': ") - 3  # rank 0's progress lines, less the 3-step point's
    assert len(loss_steps(outputs, killed.info.run_id)) == printed > 3


def _training(outputs: Path, steps: int) -> bool:
    """A point's run is RUNNING with at least `steps` losses logged."""
    running = [r for r in runs(outputs) if r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags]
    return any(len(loss_steps(outputs, r.info.run_id)) >= steps for r in running)


def test_two_sweeps_at_once_on_one_store_lose_no_run_and_no_metric(outputs: Path):
    """The same command started twice at once: two sweeps (the second does not carry on in the first,
    whose driver is alive), every point FINISHED with every step's metrics."""
    sweep = pipeline_cmd(outputs, "-m", "trainer.max_steps=5,8", "zero=stage1")
    drivers = [start_cli(sweep, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for driver in drivers:
        _, stderr = driver.communicate(timeout=600)
        assert driver.returncode == 0, stderr[-3000:]
    parents = [r for r in runs(outputs) if r.data.tags.get("zerosweep.role") == "sweep"]
    points = [r for r in runs(outputs) if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(points) == 4
    assert {r.info.status for r in parents + points} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {p.info.run_id for p in parents}
    client = mlflow_client(outputs)
    for run in points:
        steps = int(run.data.params["trainer.max_steps"])
        for key in ("loss", "grad_norm", "learning_rate", "step_time_s"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(
                range(1, steps + 1)
            )
        assert "final_loss" in run.data.metrics


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (a tmpfs; mounting needs root, as CI and the Slurm tests have)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "small"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:  # a container without the right to mount
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_that_fills_up_at_a_checkpoint_fails_its_point_saying_so_and_the_sweep_exits_1(
    outputs: Path, small_disk: Path
):
    """The points' dirs on a disk too small for one checkpoint (the store elsewhere): the point ends
    FAILED with the full disk as its reason, not left RUNNING for a later start to call it killed;
    the table is printed and the sweep exits 1."""
    sweep = small_disk / "sweep"
    result = run_pipeline(
        outputs,
        "-m",
        f"hydra.sweep.dir={sweep}",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "zero=stage2",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (point,) = [r for r in runs(outputs) if r.data.tags.get("zerosweep.role") != "sweep"]
    assert point.info.status == "FAILED"
    error = artifact_text(outputs, point.info.run_id, "error.txt", outputs.parent / "e")
    assert f"no space left on device: {sweep / '0'} has " in error, error[-2000:]
    assert f"== sweep {sweep}: 1 points" in result.stdout and "FAILED" in result.stdout
    assert all(r.info.status != "RUNNING" for r in runs(outputs))
