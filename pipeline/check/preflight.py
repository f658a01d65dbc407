"""Checks of the machine a point will run on: NVMe path, libaio, GPU-only features, HF names.

Run before any process or job starts (locally) and again at the start of a cluster job, on
the node that runs it. Each failure is one ConfigError naming the key to change.
"""

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.config import GIB, Config, OffloadDevice, Provider
from pipeline.errors import ConfigError


def check(cfg: Config, runs_here: bool = True) -> None:
    """Raise ConfigError for the first problem of this machine with this config. The GPU checks
    only where the point will train (runs_here): a cluster's nodes check themselves, in the job.
    What needs the plan (room on the NVMe drive) is check_nvme_room, after it."""
    _check_hf_names(cfg)
    if cfg.offload.device == OffloadDevice.nvme:
        _check_nvme_path(cfg)
        # Where the point trains (a cluster's node tells of its own drive, in the job); each point's
        # job says it before it trains (the command line's own check runs quiet).
        warning = slow_drive_warning(nvme_path(cfg)) if runs_here else None
        if warning:
            print(warning, file=sys.stderr)
        if not libaio_usable():
            raise ConfigError(
                "offload.device",
                "NVMe offload needs libaio, which DeepSpeed cannot build against here",
                "install libaio-dev (apt-get install libaio-dev), or use offload=cpu",
            )
    if runs_here and not cfg.dry_run:
        _check_nodes(cfg)
        _check_accelerator(cfg)


def _check_nodes(cfg: Config) -> None:
    """More nodes than this machine: only a cluster's job spans nodes (in it, Slurm says how many)."""
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", 1))
    if cfg.trainer.nnodes > nodes:
        raise ConfigError(
            "trainer.nnodes",
            f"{cfg.trainer.nnodes} nodes, but this trains on this machine only (no -m launcher=slurm)",
            "add -m launcher=slurm (each point a Slurm job across the nodes), or set trainer.nnodes=1",
        )


def nvme_path(cfg: Config) -> Path:
    return Path(cfg.offload.nvme_path).expanduser().absolute()


def _check_nvme_path(cfg: Config) -> None:
    path = nvme_path(cfg)
    if path == Path(cfg.outputs_dir).absolute() / "nvme":
        path.mkdir(parents=True, exist_ok=True)  # the default lives in our own outputs/
    if not path.is_dir():
        raise ConfigError(
            "offload.nvme_path",
            f"{path} does not exist",
            "create it, or point offload.nvme_path at a directory on an NVMe drive",
        )
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(
            "offload.nvme_path",
            f"{path} is not writable ({e.strerror})",
            "point offload.nvme_path at a writable directory",
        ) from None


@dataclass(frozen=True)
class Drive:
    """The disk under a path, as the kernel describes it (/sys/block/<name>)."""

    name: str  # nvme0n1, sda, vda
    model: str  # "" where the device gives none (virtio)
    rotational: bool

    @property
    def nvme(self) -> bool:
        return self.name.startswith("nvme")


def drive_of(path: Path, sysfs: Path = Path("/sys")) -> Drive | None:
    """The disk holding path: its filesystem's device number, /sys/dev/block/<major>:<minor>, a
    partition's parent disk. None where no one disk can be told: tmpfs, overlay and network
    filesystems (no block device), device-mapper, md, loop and zram (other devices under them)."""
    dev = os.stat(path).st_dev
    node = sysfs / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}"
    if not node.exists():
        return None
    disk = node.resolve()
    if (disk / "partition").exists():
        disk = disk.parent
    if disk.name.startswith(("dm-", "md", "loop", "zram")):
        return None
    try:
        rotational = (disk / "queue" / "rotational").read_text().strip() == "1"
    except OSError:
        return None
    model = disk / "device" / "model"
    return Drive(disk.name, model.read_text().strip() if model.exists() else "", rotational)


def slow_drive_warning(path: Path, sysfs: Path = Path("/sys")) -> str | None:
    """One line where path is on a drive that is not NVMe; None on NVMe, or where the drive cannot be told
    (no false warning)."""
    drive = drive_of(path, sysfs)
    if drive is None or drive.nvme:
        return None
    kind = ", ".join(filter(None, (drive.model, "rotational" if drive.rotational else "non-rotational")))
    return (
        f"warning: offload.nvme_path: {path} is on {drive.name} ({kind}), not an NVMe drive: the offloaded "
        "states move at that disk's speed, expect steps many times slower than on NVMe"
    )


def check_nvme_room(cfg: Config, need: int) -> None:
    """Room on the NVMe drive for the planned offloaded states (need bytes, or offload.nvme_min_free)."""
    if cfg.offload.device != OffloadDevice.nvme:
        return
    path = nvme_path(cfg)
    need = cfg.offload.nvme_min_free if cfg.offload.nvme_min_free is not None else need
    free = shutil.disk_usage(path).free
    if free < need:
        raise ConfigError(
            "offload.nvme_path",
            f"{path} has {free / GIB:.1f} GiB free, the offloaded states need {need / GIB:.1f} GiB",
            "free space there, or choose a larger drive",
        )


@lru_cache(maxsize=1)
def libaio_usable() -> bool:
    """DeepSpeed's own test: can its async_io op be built here (libaio and its headers)?"""
    with quiet():
        from deepspeed.ops.op_builder import AsyncIOBuilder

        return bool(AsyncIOBuilder().is_compatible(verbose=False))


def _check_accelerator(cfg: Config) -> None:
    import torch

    gpus = torch.cuda.device_count()
    if cfg.precision.fp16 and gpus == 0:
        raise ConfigError(
            "precision",
            "fp16 needs a GPU (DeepSpeed on CPU has no fp16)",
            "use precision=bf16 or precision=fp32 here, or dry_run=true to check the plan",
        )
    if cfg.precision.tf32 and not _tf32_here():
        raise ConfigError(
            "precision.tf32",
            "TF32 needs an Ampere or newer CUDA GPU (TrainingArguments raises without one)",
            "use precision.tf32=null (torch's default) or false here, or dry_run=true to check the plan",
        )
    if cfg.precision.fp8 and not cfg.precision.fp8_emulate:
        _check_fp8_here(gpus)
    if cfg.trainer.liger_kernel:
        _check_liger_here(gpus)
    if cfg.peft.quantized and gpus == 0:
        raise ConfigError(
            "peft",
            "qlora needs a CUDA GPU (bitsandbytes' 4-bit layers run on CUDA only)",
            "use peft=lora here, or dry_run=true to check the plan",
        )
    cores = len(os.sched_getaffinity(0))
    if not gpus and cfg.trainer.nproc_per_node > cores:
        raise ConfigError(
            "trainer.nproc_per_node",
            f"{cfg.trainer.nproc_per_node} ranks but {cores} CPU cores here and no GPU",
            f"set trainer.nproc_per_node={cores} or fewer",
        )
    if gpus and cfg.trainer.nproc_per_node > gpus:
        raise ConfigError(
            "trainer.nproc_per_node",
            f"{cfg.trainer.nproc_per_node} ranks but {gpus} GPUs here",
            f"set trainer.nproc_per_node={gpus} or fewer",
        )


def _check_fp8_here(gpus: int) -> None:
    """torch's float8 matmul (torch._scaled_mm) runs on CUDA GPUs of compute capability 8.9 or newer."""
    import torch

    if importlib.util.find_spec("torchao") is None:
        raise ConfigError(
            "precision", "fp8 trains through torchao, which is not installed", "pip install torchao"
        )
    where = "no GPU here" if gpus == 0 else None
    if gpus and torch.cuda.get_device_capability(0) < (8, 9):
        name = torch.cuda.get_device_name(0)
        where = f"{name} has no fp8 (compute capability 8.9+: Ada, Hopper, Blackwell)"
    if where:
        raise ConfigError(
            "precision",
            f"fp8 needs a GPU with float8 matmuls, and {where}",
            "use precision=bf16 here, precision.fp8_emulate=true to check fp8's numerics, "
            "or dry_run=true to check the plan",
        )


def _check_liger_here(gpus: int) -> None:
    """Liger's kernels are Triton kernels: CUDA only, and the Trainer raises without the package."""
    if gpus == 0:
        raise ConfigError(
            "trainer.liger_kernel",
            "Liger's kernels run on CUDA GPUs only, and there is no GPU here",
            "use trainer.liger_kernel=false here, or dry_run=true to check the plan",
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError(
            "trainer.liger_kernel",
            "Liger's kernels are not installed",
            "pip install 'zerosweep[liger]' (or liger-kernel)",
        )


def _tf32_here() -> bool:
    """HF's own test (TrainingArguments.__post_init__ raises ValueError for tf32=True where it fails)."""
    from transformers.utils import is_torch_tf32_available

    return is_torch_tf32_available()


def _check_hf_names(cfg: Config) -> None:
    if cfg.optimizer.provider == Provider.hf:
        from transformers.training_args import OptimizerNames

        if cfg.optimizer.name not in {o.value for o in OptimizerNames}:
            raise ConfigError(
                "optimizer.name",
                f"the HF Trainer has no optim '{cfg.optimizer.name}'",
                "use adamw_torch, adamw_torch_fused, adafactor, sgd, ... (transformers OptimizerNames)",
            )
    if cfg.scheduler.provider == Provider.hf:
        from transformers.trainer_utils import SchedulerType

        if cfg.scheduler.name not in {s.value for s in SchedulerType}:
            raise ConfigError(
                "scheduler.name",
                f"the HF Trainer has no lr_scheduler_type '{cfg.scheduler.name}'",
                "use linear, cosine, constant_with_warmup, ... (transformers SchedulerType)",
            )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what DeepSpeed prints at import and build-test time, down to the file descriptors."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
