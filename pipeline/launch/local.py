"""Where a point's ranks run. Here (`Local`): one rank in-process, or N under torch's elastic
launcher; the Slurm side (slurm.py) is the other `Placement`.

Hydra runs the job function once; the N ranks are spawned from inside it, so Hydra never runs
twice (the usual Hydra + DDP trap) and each rank gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*.
"""

import atexit
import functools
import gc
import multiprocessing
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from pipeline import track
from pipeline.errors import Terminated, raise_terminated
from pipeline.job import Job, Summary
from pipeline.rank import train, watchdog

T = TypeVar("T")


class Placement(Protocol):
    """What app.run asks of where the ranks run, instead of reading the environment itself."""

    # This process opens and closes the point's MLflow run (Slurm: only the task of rank 0).
    owns_run: bool
    # An earlier attempt of this job ran (a Slurm requeue): reopen its run, resume its checkpoint.
    requeued: bool
    # In a job across nodes: this node's name, which its system metrics go under (None: one machine).
    node: str | None
    # This process samples its node's system metrics into a run it does not own (in a job across
    # nodes, the first task of each node but rank 0's).
    samples_node: bool
    # A failed try can be tried again in this process (sweep.retries). Not in a Slurm job of several
    # tasks: a rank that died leaves the others waiting for it; the driver submits a new job instead.
    retries_in_place: bool

    def tags(self) -> dict[str, str]:
        """Tags that let a run left RUNNING be settled later (its owner process, or Slurm job)."""

    @property
    def ranks(self) -> int:
        """The world size this attempt trains with (a requeued Slurm job may have another)."""

    def checkpoint(self, out: Path) -> str | None:
        """The checkpoint to resume from, if this attempt resumes one."""

    def requeued_after(self) -> str:
        """What ended the earlier attempts of this job, when it was requeued ('' otherwise)."""

    def launch(self, job: Job) -> Summary:
        """Train the job's ranks; returns rank 0's summary."""


@dataclass
class Local:
    """This machine: one rank in this process, or nproc ranks under torch's elastic launcher."""

    nproc: int
    owns_run: bool = True
    requeued: bool = False
    node: str | None = None
    samples_node: bool = False
    retries_in_place: bool = True

    @property
    def ranks(self) -> int:
        return self.nproc

    def tags(self) -> dict[str, str]:
        return track.owner_tags()

    def checkpoint(self, out: Path) -> str | None:
        return None

    def requeued_after(self) -> str:
        return ""

    def launch(self, job: Job) -> Summary:
        watchdog.forget(job.out)
        try:
            return self._ranks(job)
        except Exception as e:  # a hang stops the ranks; their stacks say where they waited
            hung = watchdog.collect(job.out)
            if hung is None:
                raise
            raise hung from e

    def _ranks(self, job: Job) -> Summary:
        if self.nproc == 1:
            return _in_process(job)
        try:
            return on_ranks(self.nproc, elastic_rank, job)[0]
        except SignalException as e:  # the elastic agent's own SIGTERM handler, during the run
            raise Terminated(f"terminated by {signal.Signals(e.sigval).name}") from e
        except ChildFailedError as e:  # its rank tracebacks above, which ranks died and how last
            raise RuntimeError(ranks_failed(e)) from e


def ranks_failed(error: ChildFailedError) -> str:
    """Each failed rank and why, those killed by a signal first. Elastic names the failure it saw first
    as the root cause, and a rank killed outright can be seen after the peers that failed on its broken
    link."""
    failures = sorted(error.failures.items(), key=lambda item: (item[1].exitcode >= 0, item[0]))
    return "ranks failed: " + "; ".join(f"rank {rank} {_why(f)}" for rank, f in failures)


def _why(failure: ProcessFailure) -> str:
    """A signal's name, or the first line of the error the rank recorded (@record), or its exit code."""
    if failure.exitcode < 0:
        return f"died: killed by {failure.signal_name()}"
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
    recorded = failure.error_file_data.get("message") not in (None, "<NONE>") and message.strip()
    return f"failed: {message.strip().splitlines()[0]}" if recorded else f"exited {failure.exitcode}"


def on_ranks(nproc: int, fn: Callable[..., T], *args: object) -> dict[int, T]:
    """fn(*args) on nproc ranks of this machine under torch's elastic launcher: each rank's result."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"zerosweep-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        start_method=_start_method(),
        max_restarts=0,
        # Polled often: a rank's end is seen at once (and one killed outright before the peers its
        # death broke: _after_peers), as elastic names the first failure it finds as the cause.
        monitor_interval=0.1,
    )
    return elastic_launch(config, functools.update_wrapper(functools.partial(_after_peers, fn), fn))(*args)


# Long past the launcher's 0.1 s polls, even on a loaded host (on a 2-core runner, a rank's broken
# link was once seen before its SIGKILLed peer); paid only by a rank whose peer is already gone.
PEER_GRACE_S = 3.0


def _after_peers(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) on a rank that, when a collective fails on its link to another rank, leaves a few
    seconds after the other: the launcher names the first failure it sees, and the other rank's death
    or error is the cause, this one only its echo."""
    try:
        return fn(*args)
    except Exception as e:
        if isinstance(e, dist.DistError) or "/gloo/transport/" in str(e):  # NCCL's errors, gloo's links
            time.sleep(PEER_GRACE_S)
        raise


def _start_method() -> str:
    """How the ranks' processes start. Spawned, each rank imports torch, DeepSpeed, transformers and
    MLflow anew (~5 s of CPU a rank, every point of a sweep). Without a GPU they fork from one
    forkserver that imported them once, at the job's first multi-rank point: later points and their
    ranks pay no imports. GPU ranks are spawned: on an H100, a rank forked from a server that imported
    this module failed its first CUDA call ("Cannot re-initialize CUDA in forked subprocess", NVML-based
    check on), where spawned ones reached their first matmul in 2.8-3.0 s (benchmarks/forkserver_cuda.py,
    benchmarks/RESULTS.md, twentieth session)."""
    if torch.cuda.is_available():
        return "spawn"
    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    return "forkserver"


def _in_process(job: Job) -> Summary:
    # A world up already: a local sweep's earlier point trained here, and hands its memory back first
    # (not after the last point, whose process is ending: 0.5 s of a tiny run).
    if dist.is_initialized():
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    world_of_one()
    return train.worker(job, own_process=False)


def world_of_one() -> None:
    """A world of one rank in this process; it stays up across the points of a local sweep."""
    if "RANK" in os.environ:
        return
    os.environ.update(one_rank_env())
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def one_rank_env() -> dict[str, str]:
    """The environment torch.distributed reads for a world of one rank, on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }


@record  # a failing rank's exception reaches the job's error (else only "ChildFailedError")
def elastic_rank(job: Job) -> Summary:
    """A rank under torch's elastic launcher, which stops the other ranks with SIGTERM when one
    fails: raised here, so rank 0's buffered metrics are flushed on the way out. (A Slurm task
    keeps submitit's handling: Slurm sends SIGTERM before a preemption's requeue.)"""
    signal.signal(signal.SIGTERM, raise_terminated)
    return rank_main(job)


def rank_main(job: Job) -> Summary:
    """A training rank in its own process."""
    return in_rank(train.worker, job)


def in_rank(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) as a rank in its own process: its share of the host's CPUs, then the process group
    left cleanly (gloo can abort at interpreter exit otherwise)."""
    share_cpus()
    try:
        return fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def share_cpus() -> None:
    """This rank's CPU threads (torch's and the OpenMP of DeepSpeed's CPU Adam): OMP_NUM_THREADS if
    given, a Slurm task's CPUs, else an equal share of this host's. torchrun gives each of several
    ranks 1 thread (its CPU Adam ran 3x slower on 2 GPUs: RESULTS.md), torch alone all to each."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = os.environ.get("SLURM_CPUS_PER_TASK") or str(max(1, len(os.sched_getaffinity(0)) // local))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
