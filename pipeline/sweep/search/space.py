"""The space a search walks: each knob's options (search.*), the overrides one point trains with,
and the global batch every point keeps (micro batch x accumulation x ranks: the user's batch is a
constraint, so accumulation follows the micro batch)."""

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.check.compose import CONF_DIR
from pipeline.config import Config, SearchConf
from pipeline.errors import ConfigError

Point = dict[str, Any]  # knob -> option
GROUPS = ("zero", "offload", "perf", "precision")  # knobs that pick a config group's option
SHORT = {"micro_batch_size": "mbs", "gradient_checkpointing": "ckpt", "bucket_size": "buckets"}


@dataclass
class Space:
    choices: dict[str, list[Any]]  # knob -> its options, in the order given
    batch_per_rank: int  # micro batch x accumulation, what every point keeps

    @classmethod
    def of(cls, cfg: Config) -> "Space":
        """The space search.* describes, checked: one ConfigError naming the key if it is unusable."""
        s: SearchConf = cfg.search
        per_rank = cfg.batch_per_rank
        _check(s)
        micro = [m for m in s.micro_batch_size if m >= 1 and per_rank % m == 0]
        if not micro:
            raise ConfigError(
                "search.micro_batch_size",
                f"none of {s.micro_batch_size} divides the batch per rank, {per_rank}"
                " (trainer.micro_batch_size x trainer.gradient_accumulation_steps)",
                f"give divisors of {per_rank}, e.g. search.micro_batch_size=[1,{per_rank}]",
            )
        choices = {
            "zero": list(s.zero),
            "offload": list(s.offload),
            "micro_batch_size": micro,
            "gradient_checkpointing": list(s.gradient_checkpointing),
            "perf": list(s.perf),
            "precision": precisions(cfg),
            "bucket_size": list(s.bucket_size),
        }
        return cls(choices, per_rank)

    @property
    def size(self) -> int:
        return math.prod(len(options) for options in self.choices.values())

    def overrides(self, point: Point) -> list[str]:
        """The command-line overrides that train this point."""
        micro = point["micro_batch_size"]
        out = [f"{group}={point[group]}" for group in GROUPS if point[group] is not None]
        out += [
            f"trainer.micro_batch_size={micro}",
            f"trainer.gradient_accumulation_steps={self.batch_per_rank // micro}",
            f"trainer.gradient_checkpointing={str(point['gradient_checkpointing']).lower()}",
        ]
        if point["bucket_size"] is not None:
            out += [f"zero.{k}_bucket_size={point['bucket_size']}" for k in ("reduce", "allgather")]
        return out

    def name(self, point: Point) -> str:
        """The point by the knobs that vary (mbs=4x2: micro batch 4, accumulation 2)."""
        parts = []
        for knob, options in self.choices.items():
            if len(options) < 2:
                continue
            value = point[knob]
            if value is None and knob == "precision":
                value = "yours"
            if knob == "micro_batch_size":
                value = f"{value}x{self.batch_per_rank // value}"
            parts.append(f"{SHORT.get(knob, knob)}={str(value).lower()}")
        return ",".join(parts) or "the only point"

    def contains(self, point: Point) -> bool:
        return point.keys() == self.choices.keys() and all(point[k] in v for k, v in self.choices.items())

    def by_preference(self) -> Iterator[Point]:
        """Every point, the likely fastest first: the lowest ZeRO stage, no offload, the largest
        micro batch, no recomputation; the perf presets and buckets in the order given. The search
        starts with the first of these that fits (what the memory plan knows, the autotuner's
        fast start), then Optuna takes over."""
        order = dict(self.choices)
        order["offload"] = sorted(order["offload"], key=lambda o: o != "none")
        order["micro_batch_size"] = sorted(order["micro_batch_size"], reverse=True)
        order["gradient_checkpointing"] = sorted(order["gradient_checkpointing"])
        for values in itertools.product(*order.values()):
            yield dict(zip(order, values, strict=True))


def precisions(cfg: Config) -> list[str | None]:
    """search.precision's options for this config, in order, each once: null is the user's own; fp8
    (bf16 with float8 matmuls) only where the user trains in bf16, as another precision would change
    what is trained."""
    s, p = cfg.search.precision, cfg.precision
    own = "fp8" if p.fp8 else p.dtype.value
    kept = [o for o in s if o != "fp8" or (p.bf16 and not p.fp8)]
    return list(dict.fromkeys(None if o == own else o for o in kept)) or [None]


def _check(s: SearchConf) -> None:
    if s.trials < 1 or s.steps < 1:
        key = "search.trials" if s.trials < 1 else "search.steps"
        raise ConfigError(key, "must be at least 1", f"set {key}=3 or more")
    if s.parallel < 1:
        raise ConfigError("search.parallel", "must be at least 1", "set search.parallel=1 or more")
    if s.prune_margin < 0:
        raise ConfigError("search.prune_margin", "is negative", "give a fraction >= 0, e.g. 0.1")
    for knob in (*GROUPS, "micro_batch_size", "gradient_checkpointing", "bucket_size"):
        if not getattr(s, knob):
            raise ConfigError(f"search.{knob}", "is empty", f"give at least one option: search.{knob}=[...]")
    for group in GROUPS:
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        unknown = [o for o in getattr(s, group) if o is not None and o not in known]
        if unknown:
            raise ConfigError(
                f"search.{group}", f"no option {unknown[0]}", f"choose among {', '.join(known)}"
            )
