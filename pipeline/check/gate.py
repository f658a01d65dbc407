"""Can this point start? The rules, the user's model and data, the plan, DeepSpeed's own config
models on it, this machine, then the memory: each refusal is one ConfigError naming the key. The
command line, the search's trials and the job (here, or a Slurm job) all ask `admit`."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.check import fit, inputs, preflight, rules
from pipeline.config import Config
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # the plan loads torch and transformers: not before the cheaper checks passed
    from pipeline.plan import Plan


@dataclass
class Admission:
    """A point the checks let through: its plan, and whether it fits the memory where it runs."""

    plan: "Plan"
    # It does not fit the GPU (or host) memory: a single run is refused, a sweep's point skipped.
    misfit: ConfigError | None


def admit(cfg: Config, output_dir: Path, use_cpu: bool, runs_here: bool = True) -> Admission:
    """Can this point start? ConfigError where a rule, its model or data, or this machine refuses it;
    otherwise its plan, held against the memory (runs_here: this machine's, else what the launcher says)."""
    rules.check(cfg)
    inputs.check(cfg)
    preflight.check(cfg, runs_here)
    from pipeline import plan

    the_plan = plan.make(cfg, output_dir, use_cpu)
    deepspeed_accepts(the_plan.deepspeed)
    preflight.check_nvme_room(cfg, the_plan.memory.nvme)
    return Admission(the_plan, fit.refusal(cfg, the_plan.memory, runs_here))


def deepspeed_accepts(ds: dict[str, Any]) -> None:
    """DeepSpeed's own config models on the planned dict: what it would refuse in the ranks, after
    the job started, is refused here, in one line."""
    from deepspeed.runtime.precision_config import get_bfloat16_config, get_float16_config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    for section, check in (
        ("zero_optimization", lambda: DeepSpeedZeroConfig(**ds["zero_optimization"])),
        ("fp16", lambda: get_float16_config(ds)),
        ("bf16", lambda: get_bfloat16_config(ds)),
    ):
        try:
            check()
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in (section, *first["loc"]))
            raise ConfigError(
                OUR_KEY.get(section, section),
                f"DeepSpeed refuses {where}: {first['msg']}",
                "see pipeline/plan/settings.py",
            ) from None


# The config group each DeepSpeed section is planned from.
OUR_KEY = {"zero_optimization": "zero", "fp16": "precision", "bf16": "precision"}
