"""Can this point start? The rules, the user's model and data, the plan, DeepSpeed's own config
models on it, this machine, then the memory: each refusal is one ConfigError naming the key. The
command line, the search's trials and the job (here, or a Slurm job) all ask `admit`."""

import difflib
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
    deepspeed_knows(cfg.deepspeed)
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


def deepspeed_knows(extra: dict[str, Any], prefix: str = "deepspeed.") -> None:
    """deepspeed.<key> values, read by DeepSpeed's own config parser: it asks for every key it knows
    by name, so one it never asked for is a typo that DeepSpeed would ignore without a word. Refused
    with the closest name it asked for at that level; a value it refuses, with its reason. Keys are
    named with prefix (none for a user's JSON file, whose keys they are)."""
    if not extra:
        return
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    read = _Reading({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, **extra})
    try:
        DeepSpeedConfig(read)
    except ValidationError as e:  # a section DeepSpeed models with pydantic
        first = e.errors()[0]
        where = ".".join(str(part) for part in (e.title, *first["loc"]))
        raise ConfigError(
            "deepspeed", f"DeepSpeed refuses {where}: {first['msg']}", "see DeepSpeed's config docs"
        ) from None
    except Exception as e:  # its parser raises what each older section does: assertions, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            "deepspeed", f"DeepSpeed refuses it: {first}", "see DeepSpeed's config docs"
        ) from None
    unknown = read.unknown(set(extra))
    if unknown:
        path, known = unknown
        near = difflib.get_close_matches(path[-1], known, n=1)
        fix = f"did you mean {prefix}{'.'.join((*path[:-1], near[0]))}?" if near else "remove it"
        raise ConfigError(f"{prefix}{'.'.join(path)}", "DeepSpeed has no such key (it would ignore it)", fix)


class _Reading(dict):
    """A config dict that notes which keys its reader asks for by name (nested dicts too). Where the
    reader takes a section whole (a pydantic model of DeepSpeed's: it refuses unknown keys itself),
    no key of it is judged."""

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__({k: _Reading(v) if isinstance(v, dict) else v for k, v in value.items()})
        self.asked: set[str] = set()
        self.whole = False

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def keys(self) -> Any:
        self.whole = True
        return super().keys()

    def __iter__(self) -> Any:
        self.whole = True
        return super().__iter__()

    def unknown(self, mine: set[str], path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], list[str]] | None:
        """The first of mine (keys of this level to judge) never asked for, with those that were."""
        for key in sorted(mine):
            if not self.whole and key not in self.asked:
                return (*path, key), sorted(self.asked)
            value = dict.get(self, key)
            # A section its reader asked for and then never read through these methods went to a
            # pydantic model as it is (the monitors' tensorboard, ...), which refuses unknown keys itself.
            if isinstance(value, _Reading) and (value.asked or value.whole):
                found = value.unknown(set(dict.keys(value)), (*path, key))
                if found:
                    return found
        return None
