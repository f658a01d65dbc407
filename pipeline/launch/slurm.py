"""The job side of launcher=slurm: each task of a point's Slurm job is one rank.

torch's variables come from Slurm's (submitit's TorchDistributedEnvironment); the task of rank 0
owns the point's MLflow run; a requeued job (preemption, time limit) reopens that run and
resumes from its newest checkpoint.
"""

import logging
import os
import signal
import subprocess
from pathlib import Path

import submitit
from submitit.slurm.slurm import SlurmJobEnvironment

from pipeline import track
from pipeline.config import Config
from pipeline.job import Job, Summary
from pipeline.launch import local
from pipeline.rank import checkpoints


class SlurmTask:
    """This process: one task of a Slurm job that launcher=slurm submitted."""

    def __init__(self) -> None:
        self.owns_run = os.environ["SLURM_PROCID"] == "0"
        self.requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
        across_nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) > 1
        self.node = os.environ["SLURMD_NODENAME"] if across_nodes else None
        self.samples_node = across_nodes and not self.owns_run and os.environ.get("SLURM_LOCALID") == "0"
        self.retries_in_place = int(os.environ.get("SLURM_NTASKS", "1")) == 1
        SlurmJobEnvironment._requeue = requeue  # submitit's, where Slurm's own SIGTERM may end scontrol

    def tags(self) -> dict[str, str]:
        """The job as submitit and sacct name it (123, or 123_4 in an array): a run this job leaves
        RUNNING is settled from the job's state (launchers/slurm.py)."""
        return {track.SLURM_JOB: submitit.JobEnvironment().job_id}

    @property
    def ranks(self) -> int:
        """The job's tasks as Slurm runs them now (after a requeue onto other nodes, too)."""
        return submitit.JobEnvironment().num_tasks

    def checkpoint(self, out: Path) -> str | None:
        return checkpoints.newest(out) if self.requeued else None

    def requeued_after(self) -> str:
        """The states Slurm's accounting gives this job's earlier attempts (NODE_FAIL, PREEMPTED,
        REQUEUED for a time limit...), oldest first: why the run was reopened."""
        if not self.requeued:
            return ""
        restarts = f"restart {os.environ['SLURM_RESTART_COUNT']}"
        try:
            listed = subprocess.run(
                ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", os.environ["SLURM_JOB_ID"]],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split("\n")
        except (OSError, subprocess.TimeoutExpired):  # no accounting here
            return restarts
        earlier = [line.split()[0] for line in listed if line.strip()][:-1]  # the last one is this attempt
        return ", ".join(earlier) or restarts

    def launch(self, job: Job) -> Summary:
        """Each task is a rank, as a local rank is (its CPU threads are the task's CPUs). The ranks
        meet at the job's first node (submitit's MASTER_ADDR), on the job's own port."""
        env = submitit.helpers.TorchDistributedEnvironment()
        env.master_port = rendezvous_port(int(os.environ["SLURM_JOB_ID"]))
        env.export(set_cuda_visible_devices=False, overwrite=True)
        return local.rank_main(job)


def requeue(env: SlurmJobEnvironment, countdown: int) -> None:
    """submitit's requeue on a time-out or preemption signal (`scontrol requeue`), except that a
    scontrol ended by SIGTERM is a requeue done: Slurm's requeue ends the job's processes, and on a
    loaded node that reached scontrol before it exited. submitit raised, and the point was marked
    FAILED while Slurm ran it again (a fresh clone's test of an interrupted job)."""
    try:
        subprocess.check_call(["scontrol", "requeue", env.job_id], timeout=60)
    except subprocess.CalledProcessError as e:
        if e.returncode != -signal.SIGTERM:
            raise
    logging.getLogger(__name__).info(f"Requeued job {env.job_id} ({countdown} remaining timeouts)")


def rendezvous_port(job_id: int) -> int:
    """The job's port for torch's rendezvous, from its Slurm id (each task of an array has its own):
    two jobs sharing a node take the same port only if their ids are 40000 apart. (submitit draws
    one at random from the id: two jobs could draw the same.)"""
    return 20000 + job_id % 40000


def placement(cfg: Config) -> local.Placement:
    """Where this job's ranks run: as the tasks of a Slurm job that launcher=slurm submitted (not a
    plain run inside an allocation), or here."""
    if cfg.launcher.name == "slurm" and "SLURM_PROCID" in os.environ:
        return SlurmTask()
    return local.Local(cfg.trainer.nproc_per_node)
