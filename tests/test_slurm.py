"""Sweeps on a real Slurm (launchers/local-slurm.sh): jobs, ranks, requeue, cancel, in MLflow.

Drives the CLI as a user does (`python -m pipeline -m launcher=slurm ...`) and asserts on what
Slurm (sacct) and MLflow recorded.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import submitit
from mlflow.entities import Run

from helpers import ROOT, artifact_text, cli_env, loss_steps, mlflow_client, pipeline_cmd, wait_for

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "launchers" / "local-slurm.sh"


@pytest.fixture(scope="session", autouse=True)
def local_slurm() -> Iterator[None]:
    """A real single-node Slurm for the session; left running if it already was."""
    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        pytest.skip("needs root and Debian's Slurm (scripts/system-deps.sh)")
    was_up = "slurmctld: running" in subprocess.run([SCRIPT, "status"], capture_output=True, text=True).stdout
    subprocess.run([SCRIPT, "start"], check=True, timeout=120)
    yield
    if not was_up:
        subprocess.run([SCRIPT, "stop"], check=True, timeout=120)


def start(outputs: Path, *overrides: str) -> subprocess.Popen:
    """`python -m pipeline -m launcher=slurm OVERRIDES outputs_dir=<outputs>` from the project root."""
    cmd = pipeline_cmd(outputs, "-m", "launcher=slurm", *overrides)
    return subprocess.Popen(
        cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, rc: int = 0) -> str:
    out, _ = proc.communicate(timeout=420)
    assert proc.returncode == rc, f"exit {proc.returncode}, expected {rc}\n{out[-6000:]}"
    return out


def sweep_dir(outputs: Path) -> Path:
    (found,) = (outputs / "sweeps").iterdir()
    return found


def parent_and_children(outputs: Path) -> tuple[Run, list[Run]]:
    client = mlflow_client(outputs)
    exp = client.get_experiment_by_name("zerosweep")
    all_runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    (parent,) = [r for r in all_runs if r.data.tags.get("zerosweep.role") == "sweep"]
    children = [r for r in all_runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return parent, children


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|")[:2] for line in out.splitlines())


def test_four_point_sweep_is_four_jobs_and_nested_runs(tmp_path: Path) -> None:
    out = finish(start(tmp_path, "zero=stage2,stage3", "offload=none,cpu", "trainer.max_steps=8"))
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert "launcher=slurm zero=stage2,stage3 offload=none,cpu" in parent.data.params["sweep.overrides"]
    job_ids = parent.data.tags["zerosweep.slurm_job_ids"].split()
    assert len(set(job_ids)) == 4
    assert sacct_states(job_ids) == {j: "COMPLETED" for j in job_ids}
    points = {(r.data.params["zero"], r.data.params["offload"]): r for r in children}
    assert set(points) == {(z, o) for z in ("stage2", "stage3") for o in ("none", "cpu")}
    for (zero, offload), r in points.items():
        assert r.info.status == "FINISHED" and r.info.run_name == f"zero={zero},offload={offload}"
        assert r.data.params["zero.stage"] == zero[-1] and r.data.params["trainer.max_steps"] == "8"
        assert r.data.params["offload.device"] == offload
        assert r.data.tags["zerosweep.slurm_job_id"] in job_ids
        assert loss_steps(tmp_path, r.info.run_id) == list(range(1, 9))
        assert r.data.tags["zerosweep.slurm_job_id"] in out and r.info.run_id in out  # the printed table
    assert len({round(r.data.metrics["final_loss"], 4) for r in children}) == 1  # same seed, same losses


def test_two_task_job_is_two_ranks_with_zero_partitions(tmp_path: Path) -> None:
    """trainer.nproc_per_node=2: one job of 2 tasks = 2 ranks; each rank saves its own RNG state and
    its own ZeRO partition of the optimizer (files named by rank), which needs WORLD_SIZE=2."""
    finish(
        start(
            tmp_path,
            "trainer.nproc_per_node=2",
            "zero=stage2,stage3",
            "trainer.max_steps=6",
            "trainer.save_steps=6",
        )
    )
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for num in ("0", "1"):
        ckpt = sweep_dir(tmp_path) / num / "checkpoints" / "checkpoint-6"
        names = sorted(p.name for p in ckpt.rglob("*.p*"))
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(names), names
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= set(names), names
    job_ids = parent.data.tags["zerosweep.slurm_job_ids"].split()
    logs = [sweep_dir(tmp_path) / ".submitit" / j / f"{j}_{task}_log.out" for j in job_ids for task in (0, 1)]
    assert all(p.exists() for p in logs), logs
    assert len({round(r.data.metrics["final_loss"], 4) for r in children}) == 1  # ZeRO-2 == ZeRO-3


def test_interrupted_job_resumes_into_the_same_run(tmp_path: Path) -> None:
    """Two identical points (save_steps differ, losses do not): point 0 is interrupted by Slurm's
    time-out signal after its first checkpoint, requeued, and resumes into its MLflow run."""
    proc = start(tmp_path, "trainer.max_steps=80", "trainer.save_steps=10,11")
    # A checkpoint is complete once the Trainer wrote its trainer_state.json (the last file it saves):
    # interrupting before that would leave nothing to resume from.
    wait_for(
        "point 0's first complete checkpoint",
        lambda: list((tmp_path / "sweeps").glob("*/0/checkpoints/checkpoint-*/trainer_state.json")),
    )
    sweep = sweep_dir(tmp_path)
    job_id = wait_for("point 0's job", lambda: sorted(p.name for p in (sweep / ".submitit").glob("*_0")))[0]
    submitit.SlurmJob(sweep / ".submitit" / "%j", job_id)._interrupt(timeout=True)
    # Slurm may hold the requeued job for a while: release it as soon as it waits.
    wait_for("the requeue", lambda: _release_if_held(job_id), timeout=120)
    out = finish(proc)
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 2, out  # no duplicate run
    runs = {r.data.params["trainer.save_steps"]: r for r in children}
    interrupted, plain = runs["10"], runs["11"]
    assert interrupted.data.tags["zerosweep.slurm_job_id"] == job_id
    assert sacct_restarts(job_id) >= 1
    assert loss_steps(tmp_path, interrupted.info.run_id) == list(range(1, 81))  # contiguous, none twice
    # It resumed from a checkpoint (not from step 0), and "steps" counts the run's steps, not the attempt's.
    resumed = interrupted.data.metrics["resumed_from_step"]
    assert plain.data.metrics["resumed_from_step"] == 0 and resumed > 0 and resumed % 10 == 0
    assert plain.data.metrics["steps"] == interrupted.data.metrics["steps"] == 80
    assert interrupted.data.metrics["final_loss"] == pytest.approx(plain.data.metrics["final_loss"], abs=1e-4)


def _release_if_held(job_id: str) -> bool:
    """True once the job has been requeued (pending or running again after it)."""
    state = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True
    ).stdout
    if state.startswith("PENDING"):
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
    return sacct_restarts(job_id) >= 1


def sacct_restarts(job_id: str) -> int:
    """How many times Slurm requeued the job (sacct lists each attempt as a REQUEUED record)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(line.startswith("REQUEUED") for line in out.splitlines())


def test_scancel_of_one_point_leaves_the_others_and_the_parent_consistent(tmp_path: Path) -> None:
    proc = start(tmp_path, "zero=stage2,stage3", "trainer.max_steps=60")
    sweep = wait_for("the sweep dir", lambda: list((tmp_path / "sweeps").glob("*")))[0]
    wait_for("point 1's MLflow run", lambda: (sweep / "1" / "mlflow_run_id").exists())
    job_id = sorted(p.name for p in (sweep / ".submitit").glob("*_1"))[0]
    subprocess.run(["scancel", job_id], check=True)
    out = finish(proc, rc=1)
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FAILED"
    states = {r.data.params["zero"]: r for r in children}
    assert states["stage2"].info.status == "FINISHED" and states["stage3"].info.status == "KILLED"
    assert states["stage3"].data.tags["zerosweep.slurm_job_id"] == job_id
    assert "CANCELLED" in artifact_text(tmp_path, states["stage3"].info.run_id, "error.txt", tmp_path)
    table = artifact_text(tmp_path, parent.info.run_id, "sweep_table.txt", tmp_path)
    assert "KILLED" in table and "KILLED" in out
    assert sacct_states([job_id])[job_id].startswith("CANCELLED")


def test_crashed_point_is_failed_and_the_others_finish(tmp_path: Path) -> None:
    """Point 1's training process dies by SIGKILL (what the OOM killer or a segfault does): its run
    is FAILED with the end of its Slurm log, the table says so, point 0 finishes."""
    proc = start(tmp_path, "zero=stage2,stage3", "trainer.max_steps=60")
    sweep = wait_for("the sweep dir", lambda: list((tmp_path / "sweeps").glob("*")))[0]
    wait_for("point 1's first logged step", lambda: _logged_steps(tmp_path, sweep / "1"))
    job_id = sorted(p.name for p in (sweep / ".submitit").glob("*_1"))[0]
    os.kill(_task_pid(job_id), 9)
    out = finish(proc, rc=1)
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FAILED"
    states = {r.data.params["zero"]: r for r in children}
    assert states["stage2"].info.status == "FINISHED" and states["stage3"].info.status == "FAILED"
    assert sacct_states([job_id])[job_id] == "FAILED"
    error = artifact_text(tmp_path, states["stage3"].info.run_id, "error.txt", tmp_path)
    assert f"Slurm job {job_id} ended FAILED" in error
    table = artifact_text(tmp_path, parent.info.run_id, "sweep_table.txt", tmp_path)
    assert "FAILED" in table and "FAILED" in out


def _logged_steps(outputs: Path, point: Path) -> list[int]:
    run_file = point / "mlflow_run_id"
    return loss_steps(outputs, run_file.read_text().strip()) if run_file.exists() else []


def _task_pid(job_id: str) -> int:
    """The pid of the Slurm task that runs array job ARRAY_TASK (submitit's python, training in-process)."""
    array_id, task = job_id.split("_")
    for proc in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
            argv = (proc / "cmdline").read_text().split("\0")
        except OSError:
            continue
        is_task = (
            "python" in Path(argv[0]).name and "submitit.core._submit" in argv
        )  # not srun, not the batch shell
        if is_task and (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")) == (array_id, task):
            return int(proc.name)
    raise AssertionError(f"no task process for Slurm job {job_id}")
