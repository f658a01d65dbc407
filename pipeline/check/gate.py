"""Can this point start? The user's model and data, the plan, DeepSpeed's own config models on it,
and this machine: each refusal is one ConfigError naming the key."""

from pathlib import Path
from typing import Any

from pipeline import plan
from pipeline.check import inputs, preflight
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.plan import Plan


def checked(cfg: Config, output_dir: Path, use_cpu: bool, runs_here: bool = True) -> Plan:
    """The point's plan, once the user's model and data, and this machine, pass their checks
    (ConfigError otherwise: one line naming the key)."""
    inputs.check(cfg)
    the_plan = plan.make(cfg, output_dir, use_cpu)
    deepspeed_accepts(the_plan.deepspeed)
    preflight.check(cfg, the_plan.memory.nvme, runs_here)
    return the_plan


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
