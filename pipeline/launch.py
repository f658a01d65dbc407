"""Start the ranks of one job: on this machine in-process for one, torch's elastic launcher for
N; or, inside a Slurm task, as the one rank that task is.

Hydra runs the job function once; the N ranks are spawned from inside it, so Hydra never runs
twice (the usual Hydra + DDP trap) and each rank gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*.
"""
import atexit
import gc
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

import submitit
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from pipeline import train


def run_local(job: Dict[str, Any], nproc: int) -> Dict[str, float]:
    """Train with nproc ranks here; returns rank 0's summary."""
    if nproc == 1:
        _single_rank_env()
        try:
            return train.worker(job)
        finally:  # the next point of a local sweep runs in this process: hand its memory back
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"zerosweep-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", start_method="spawn", max_restarts=0,
                          monitor_interval=1)
    return elastic_launch(config, rank_main)(job)[0]


def rank_main(job: Dict[str, Any]) -> Dict[str, float]:
    """A rank in its own process: train, then leave the process group cleanly (gloo can abort
    at interpreter exit otherwise)."""
    try:
        return train.worker(job)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _single_rank_env() -> None:
    """A world of one in this process; it stays up across the points of a local sweep."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def in_slurm_task(cfg: DictConfig) -> bool:
    """A task of a job submitted with launcher=slurm (not a plain run inside an allocation)."""
    return cfg.launcher.name == "slurm" and "SLURM_PROCID" in os.environ


def is_main_task() -> bool:
    """Slurm's global rank 0, or any process outside Slurm: it owns the MLflow run."""
    return os.environ.get("SLURM_PROCID", "0") == "0"


def requeued() -> bool:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def slurm_job_id() -> str:
    """As submitit and sacct name it: 123 or, in an array, 123_4."""
    return submitit.JobEnvironment().job_id


def run_in_slurm(job: Dict[str, Any]) -> Dict[str, float]:
    """This Slurm task is one rank: torch's variables come from Slurm's, then it trains. CPU
    threads match the task's CPUs (else accelerate sizes them to the whole node's cores)."""
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "SLURM_CPUS_PER_TASK" in os.environ:
        os.environ.setdefault("OMP_NUM_THREADS", os.environ["SLURM_CPUS_PER_TASK"])
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return rank_main(job)


def newest_checkpoint(out: Path) -> Optional[str]:
    """The Trainer's latest complete checkpoint-N under the job's output dir, to resume a requeued
    job from (trainer_state.json is written last: a job stopped mid-save leaves none)."""
    found = sorted((p.parent for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json")),
                   key=lambda p: int(p.name.split("-")[1]))
    return str(found[-1]) if found else None
