"""Checkpoints to resume from: the newest complete one a job left and, when another number of ranks
wrote it than will resume it, its DeepSpeed universal form (DeepSpeed's own ds_to_universal, run
once and kept inside the checkpoint as universal/), so a point goes on with another GPU count.

ZeRO-1/2/3 split the optimizer states (ZeRO-3 the weights too) into one file per rank: N ranks
cannot load the files of M. ZeRO-0 keeps them whole, and any number of ranks loads them as they are.
"""

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from pipeline.config import Config
from pipeline.errors import ConfigError

UNIVERSAL = "universal"
# DeepSpeed reads the tag of a universal checkpoint from this file (engine.load_checkpoint); the
# conversion writes it last, so it also says the conversion is complete.
LATEST_UNIVERSAL = "latest_universal"


def newest(out: Path) -> str | None:
    """The Trainer's latest complete checkpoint-N under the job's output dir (trainer_state.json is
    written last: a job stopped mid-save leaves none) whose files are whole: a broken one (a full
    disk, a file truncated or damaged on the way) is named in one line and the one before is used
    (trainer.save_total_limit keeps at least two)."""
    found = sorted(
        (p.parent for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json")),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for checkpoint in reversed(found):
        problem = damage(checkpoint)
        if problem is None:
            return str(checkpoint)
        print(f"checkpoint {checkpoint} is broken ({problem}): not resumed from", file=sys.stderr)
    return None


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files, read as far as it costs little (no tensor is loaded):
    the Trainer's state parses, DeepSpeed's `latest` names a dir that is there, each torch file is a
    whole zip archive (its directory is at its end: a truncated file has none), each safetensors file
    is as long as its header says. None if nothing is."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {e}"
    latest = checkpoint / "latest"
    if latest.is_file() and not (checkpoint / latest.read_text().strip()).is_dir():
        return f"latest names {latest.read_text().strip()}, which is not there"
    for path in sorted(checkpoint.rglob("*")):
        name = str(path.relative_to(checkpoint))
        try:
            if path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    archive.infolist()
            elif path.suffix == ".safetensors":
                with path.open("rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(size))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                if path.stat().st_size != 8 + size + end:
                    return f"{name}: {path.stat().st_size} bytes, its header says {8 + size + end}"
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            return f"{name}: {e}"
    return None


def written_by(checkpoint: Path) -> int | None:
    """How many ranks wrote the checkpoint's ZeRO states (one optimizer shard file each, also
    bf16_... ones); None where the states are whole (ZeRO-0) or there is no DeepSpeed checkpoint."""
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    shards = list((checkpoint / latest.read_text().strip()).glob("*zero_pp_rank_*_optim_states.pt"))
    return len(shards) or None


def for_ranks(checkpoint: str | None, cfg: Config, ranks: int) -> str | None:
    """The checkpoint as this job's `ranks` ranks load it: itself, or its universal form where another
    number of ranks wrote it. The loss goes on as the uninterrupted run's when the global batch
    (micro batch x accumulation x ranks) is the one the checkpoint trained with: the same samples
    make up each step (tests/test_resume_gpu_count.py); with another global batch it resumes, on
    another data order (said here)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    wrote = written_by(path)
    if wrote is None or wrote == ranks:
        return checkpoint
    if cfg.round_robin and cfg.zero.stage in (1, 2):
        # Measured with DeepSpeed 0.19.8: 2 -> 1 ranks converts 20 of the 21 weights of llama_tiny
        # wrong, 1 -> 2 loads them wrong; the loss went back to ~5.54 (ln 256, an untrained model).
        raise ConfigError(
            "zero.round_robin_gradients",
            f"DeepSpeed's universal checkpoint mixes up ZeRO-{cfg.zero.stage} states partitioned round "
            f"robin, so {path} (written by {wrote} ranks) cannot resume on {ranks}",
            f"resume it on {wrote} ranks, or train with zero.round_robin_gradients=false to change "
            "the GPU count later",
        )
    print(
        f"checkpoint {path} was written by {wrote} ranks, {ranks} resume it: "
        "through DeepSpeed's universal checkpoint",
        file=sys.stderr,
    )
    before, now = _global_batch(path, wrote), cfg.batch_per_rank * ranks
    if before != now:
        print(
            f"warning: the checkpoint trained at a global batch of {before} samples, this job's is "
            f"{now}: the loss will not follow the uninterrupted run's. Fix: keep "
            "trainer.micro_batch_size x trainer.gradient_accumulation_steps x ranks the same",
            file=sys.stderr,
        )
    return str(universal(path))


def universal(checkpoint: Path) -> Path:
    """The checkpoint converted to DeepSpeed's universal format, once: every task of a Slurm job
    asks for it, so under a lock, and a conversion cut short is started again."""
    target = checkpoint / UNIVERSAL
    with FileLock(f"{target}.lock"):
        if not (target / LATEST_UNIVERSAL).is_file():
            _convert(checkpoint, target)
    return target


def loading(training_args: dict[str, Any], resume_from: str | None) -> dict[str, Any]:
    """The Trainer's arguments to resume from resume_from: DeepSpeed loads a universal checkpoint
    only when its config says so (checkpoint.load_universal)."""
    if resume_from is None or not (Path(resume_from) / LATEST_UNIVERSAL).is_file():
        return training_args
    ds = training_args["deepspeed"]
    checkpoint = {**ds.get("checkpoint", {}), "load_universal": True}
    return {**training_args, "deepspeed": {**ds, "checkpoint": checkpoint}}


def _convert(checkpoint: Path, target: Path) -> None:
    """target: the Trainer's own files (trainer state, arguments, each rank's RNG state) linked, and
    the DeepSpeed states as ds_to_universal writes them (its tag dir, then latest_universal)."""
    from deepspeed.checkpoint import ds_to_universal

    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for f in checkpoint.iterdir():
        if f.is_file() and f.name != "latest":
            os.symlink(Path("..") / f.name, target / f.name)
    _rng_states(checkpoint, target)
    tag = (checkpoint / "latest").read_text().strip()
    ds_to_universal.main(
        argparse.Namespace(
            input_folder=str(checkpoint / tag),
            output_folder=str(target / tag),
            num_extract_workers=1,  # no worker processes: this may be a rank with threads running
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # ZeRO-1/2 checkpoints carry no universal_checkpoint_info
        )
    )


def _rng_states(checkpoint: Path, target: Path) -> None:
    """The Trainer restores rng_state.pth on one rank and rng_state_<r>.pth on rank r of several:
    one rank carries on with rank 0's state, and of several ranks after one, rank 0 takes it (the
    others keep their seed's state; the built-in models have no dropout, so the loss does not care)."""
    alone, first = checkpoint / "rng_state.pth", checkpoint / "rng_state_0.pth"
    if first.is_file() and not alone.exists():
        os.symlink(Path("..") / first.name, target / alone.name)
    if alone.is_file() and not first.exists():
        os.symlink(Path("..") / alone.name, target / first.name)


def _global_batch(checkpoint: Path, ranks: int) -> int:
    """Samples per step the checkpoint trained with, from the Trainer's saved arguments."""
    args = torch.load(checkpoint / "training_args.bin", weights_only=False)
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * ranks
