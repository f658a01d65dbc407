"""A user's DeepSpeed JSON read into the config groups (Imported): `deepspeed_config=ds.json` on the
command line, `python -m pipeline.import ds.json --name X` for conf/experiment/X.yaml.

Each key goes to the group that plans it (zero, offload, precision, optimizer, scheduler, trainer), so
the rules, the memory plan and the Trainer see the JSON's values; HF's "auto" is left to the group (the
Trainer fills it from TrainingArguments, which the groups make), and the three hidden-size autos stay
null (the plan derives them as HF does); a key no group plans is kept as the `deepspeed.<key>`
pass-through. What cannot be represented is refused in one line naming the JSON's key. The recipe the
command line names is written by check/ds_recipe.py.
"""

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.check.compose import CONF_DIR
from pipeline.config import AioConf, Config, PrecisionConf, SchedulerConf, ZeroConf
from pipeline.errors import ConfigError

KEY = "deepspeed_config"  # the command line's key, and the group its recipes are in
# HF fills these from the model's hidden size (HfTrainerDeepSpeedConfig.trainer_config_finalize); the
# plan does the same for a null.
HIDDEN_AUTOS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")
# Top-level keys a group plans, and its key.
TOP = {
    "train_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "gradient_accumulation_steps": "trainer.gradient_accumulation_steps",
    "gradient_clipping": "trainer.max_grad_norm",
    "communication_data_type": "zero.communication_data_type",
}
# Decided by the optimizer group (they only lift DeepSpeed's check of a torch optimizer).
DECIDED = ("zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer")
OPTIMIZER_PARAMS = {"lr": "optimizer.lr", "eps": "optimizer.eps", "weight_decay": "optimizer.weight_decay"}
# A scheduler's params that the Trainer shares, by the key that plans them (the plan writes them back).
SCHEDULER_SHARED = {
    "warmup_num_steps": "scheduler.warmup_steps",
    "total_num_steps": "trainer.max_steps",
    "warmup_max_lr": "optimizer.lr",
}
OFFLOAD_KEYS = {
    "offload_optimizer": {"buffer_count": "optimizer_buffer_count", "fast_init": "fast_init"},
    "offload_param": {
        "buffer_count": "param_buffer_count",
        "buffer_size": "param_buffer_size",
        "max_in_cpu": "max_in_cpu",
    },
}
SHARED_OFFLOAD = ("device", "nvme_path", "pin_memory")  # one value for both sections in the offload group


@dataclass
class Imported:
    """The JSON as the groups take it: an option per group, values by our keys, and the pass-through;
    `origins` says which JSON key each of ours came from (for the notes and refusals)."""

    source: Path
    groups: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    train_batch_size: int | None = None

    def refuse(self, json_key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.source.name}: {json_key}", problem, fix)

    def set(self, key: str, value: Any, json_key: str) -> None:
        if value != "auto":
            self.values[key] = value
            self.origins[key] = json_key

    def pick(self, group: str, option: str, json_key: str) -> None:
        self.groups[group] = option
        self.origins[group] = json_key

    def recipe(self, header: str) -> str:
        """conf/experiment-style YAML: group picks as defaults overrides, then the values."""
        body: dict[str, Any] = {}
        for key, value in self.values.items():
            node = body
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        if self.passthrough:
            body["deepspeed"] = self.passthrough
        doc = {"defaults": [{f"override /{g}": o} for g, o in self.groups.items()] + ["_self_"], **body}
        lines = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
        return "# @package _global_\n" + lines + yaml.safe_dump(doc, sort_keys=False)


def load(path: Path) -> Imported:
    """The file read, checked and mapped: ConfigError naming the JSON key for what cannot be."""
    path = path.expanduser().absolute()
    if not path.is_file():
        raise ConfigError(KEY, f"no file {path}", "give the path of a DeepSpeed JSON file")
    try:
        ds = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ConfigError(
            f"{KEY}={path.name}", f"not valid JSON: {getattr(e, 'msg', e)}{where}", "fix the file"
        ) from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{KEY}={path.name}", "not a JSON object", "give a DeepSpeed config ({...})")
    out = Imported(path)
    rest = dict(ds)
    _batch(out, rest)
    _precision(out, rest)
    _optimizer(out, rest)
    _scheduler(out, rest)
    _zero(out, rest)
    _compile(out, rest)
    for key in DECIDED:
        rest.pop(key, None)
    out.passthrough.update(rest)
    _known_to_deepspeed(out)
    _typed(out)
    return out


def _batch(out: Imported, ds: dict[str, Any]) -> None:
    from deepspeed.runtime.constants import GRADIENT_CLIPPING_DEFAULT

    for key, ours in TOP.items():
        if key in ds:
            out.set(ours, ds.pop(key), key)
    if "gradient_clipping" not in out.origins and "trainer.max_grad_norm" not in out.values:
        out.values["trainer.max_grad_norm"] = GRADIENT_CLIPPING_DEFAULT  # what DeepSpeed clips at without it
    total = ds.pop("train_batch_size", "auto")
    if total == "auto":
        return
    micro, accumulation = (
        out.values.get(k) for k in ("trainer.micro_batch_size", "trainer.gradient_accumulation_steps")
    )
    if not isinstance(total, int) or total < 1:
        raise out.refuse("train_batch_size", f"{total!r} is not a count", 'give a whole number, or "auto"')
    out.train_batch_size = total
    # DeepSpeed derives what is missing on the ranks it runs on; the recipe holds it for one rank
    # (the command line's ranks are held against it when it is used: expand()).
    if micro is None and accumulation is None:
        out.set("trainer.micro_batch_size", total, "train_batch_size")
        out.set("trainer.gradient_accumulation_steps", 1, "train_batch_size")
    elif micro is None or accumulation is None:
        known, missing = (
            (accumulation, "trainer.micro_batch_size")
            if micro is None
            else (micro, "trainer.gradient_accumulation_steps")
        )
        if total % known:
            raise out.refuse(
                "train_batch_size", f"{total} is not a multiple of {known}", "fix the batch sizes"
            )
        out.set(missing, total // known, "train_batch_size")


def _precision(out: Imported, ds: dict[str, Any]) -> None:
    scale = {f.name for f in dataclasses.fields(PrecisionConf)} - {"dtype"}
    on = []
    for section in ("fp16", "bf16", "bfloat16"):
        block = ds.pop(section, None)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise out.refuse(section, "is not a section", 'write it as {"enabled": true}')
        enabled = block.get("enabled", False)
        if enabled == "auto":
            on.append(None)
        elif enabled is True:
            on.append(section)
        for key, value in block.items():
            if key == "enabled":
                continue
            if section == "fp16" and key in scale:
                out.set(f"precision.{key}", value, f"fp16.{key}")
            else:
                out.passthrough.setdefault("fp16" if section == "fp16" else "bf16", {})[key] = value
    picked = [s for s in on if s]
    if len(picked) > 1:
        raise out.refuse("bf16.enabled", "fp16 and bf16 are both on (DeepSpeed refuses it)", "turn one off")
    if picked:
        out.pick("precision", "fp16" if picked[0] == "fp16" else "bf16", f"{picked[0]}.enabled")
    elif None not in on:  # neither on nor left to the Trainer: full precision
        out.pick("precision", "fp32", "fp16.enabled")


def _options(group: str) -> dict[str, Any]:
    """Each option of a group with its values (the schema's defaults under the option's own)."""
    schema = OmegaConf.structured(Config)[group]
    return {
        p.stem: OmegaConf.merge(schema, OmegaConf.load(p)) for p in sorted((CONF_DIR / group).glob("*.yaml"))
    }


def _option(group: str, provider: str, name: str) -> str | None:
    found = [
        o
        for o, v in _options(group).items()
        if v.provider.value == provider and v.name.lower() == name.lower()
    ]
    return found[0] if found else None


def _optimizer(out: Imported, ds: dict[str, Any]) -> None:
    from transformers import TrainingArguments

    section = ds.pop("optimizer", None)
    if section is None:  # the Trainer's own optimizer, TrainingArguments' default
        default = TrainingArguments.__dataclass_fields__["optim"].default
        out.pick("optimizer", _option("optimizer", "hf", str(default)) or "adamw_torch", "optimizer")
        return
    kind = section.get("type", "")
    option = _option("optimizer", "deepspeed", kind)
    out.pick("optimizer", option or "adamw", "optimizer.type")
    if option is None:  # a name the rules judge (DeepSpeed's other optimizers, or one it does not have)
        out.set("optimizer.name", kind, "optimizer.type")
    for key, value in section.get("params", {}).items():
        where = f"optimizer.params.{key}"
        if key in OPTIMIZER_PARAMS:
            out.set(OPTIMIZER_PARAMS[key], value, where)
        elif key == "betas" and value != "auto":
            if not (isinstance(value, list) and len(value) == 2):
                raise out.refuse(where, f"{value!r} is not two numbers", "write [beta1, beta2]")
            out.set("optimizer.beta1", value[0], where)
            out.set("optimizer.beta2", value[1], where)
        elif key != "betas":
            raise out.refuse(
                where,
                "no config group takes it (optimizer: lr, betas, eps, weight_decay)",
                "remove it from the file",
            )
    extra = set(section) - {"type", "params"}
    if extra:
        raise out.refuse(
            f"optimizer.{sorted(extra)[0]}", "DeepSpeed has no such key", 'use "type" and "params"'
        )


def _scheduler(out: Imported, ds: dict[str, Any]) -> None:
    from transformers import TrainingArguments

    section = ds.pop("scheduler", None)
    if section is None:  # the Trainer's own scheduler, TrainingArguments' default
        default = getattr(
            TrainingArguments.__dataclass_fields__["lr_scheduler_type"].default, "value", "linear"
        )
        out.pick("scheduler", _option("scheduler", "hf", default) or "warmup_linear", "scheduler")
        return
    kind = section.get("type", "")
    option = _option("scheduler", "deepspeed", kind)
    out.pick("scheduler", option or "warmup", "scheduler.type")
    if option is None or _options("scheduler")[option].name != kind:
        out.set("scheduler.name", kind, "scheduler.type")
    ours = {f.name for f in dataclasses.fields(SchedulerConf)} - {"provider", "name", "warmup_steps"}
    for key, value in section.get("params", {}).items():
        where = f"scheduler.params.{key}"
        if (
            key == "warmup_max_lr"
            and "optimizer.lr" in out.values
            and value not in ("auto", out.values["optimizer.lr"])
        ):
            raise out.refuse(
                where,
                f"{value} is not optimizer.params.lr {out.values['optimizer.lr']} (the warmup rises to it)",
                'make them equal, or "auto"',
            )
        if key in SCHEDULER_SHARED:
            out.set(SCHEDULER_SHARED[key], value, where)
        elif key in ours:
            out.set(f"scheduler.{key}", value, where)
        else:
            raise out.refuse(
                where,
                f"no config group takes it (scheduler: {', '.join(sorted(ours))})",
                "remove it from the file",
            )


def _zero_names() -> dict[str, str]:
    """Every name DeepSpeed's ZeRO config takes (field names, aliases, deprecated renames) -> the name our
    zero group uses (DeepSpeed's alias, as the guide writes it), from DeepSpeed's own pydantic model."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    fields = DeepSpeedZeroConfig.model_fields
    names = {}
    for name, f in fields.items():
        names[name] = names[f.alias] = f.alias or name
    for name, f in fields.items():
        extra = f.json_schema_extra or {}
        if extra.get("deprecated") and "new_param_fn" not in extra and extra.get("new_param") in fields:
            names[name] = names[extra["new_param"]]
    return {k: v for k, v in names.items() if k}


def _zero(out: Imported, ds: dict[str, Any]) -> None:
    section = dict(ds.pop("zero_optimization", {}))
    stage = section.pop("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise out.refuse(
            "zero_optimization.stage", f"ZeRO has stages 0-3, not {stage!r}", "give 0, 1, 2 or 3"
        )
    out.pick("zero", f"stage{stage}", "zero_optimization.stage")
    _offload(out, section, stage)
    aio = section.pop("aio", None) or ds.pop("aio", None)  # the guide nests it; DeepSpeed wants it on top
    for key, value in (aio or {}).items():
        if key not in {f.name for f in dataclasses.fields(AioConf)}:
            raise out.refuse(
                f"aio.{key}", "no config group takes it (offload.aio)", "remove it from the file"
            )
        out.set(f"offload.aio.{key}", value, f"aio.{key}")
    names, ours = _zero_names(), {f.name for f in dataclasses.fields(ZeroConf)} - {"communication_data_type"}
    for key, value in section.items():
        where = f"zero_optimization.{key}"
        if key not in names:
            near = difflib.get_close_matches(key, list(names), n=1)
            raise out.refuse(
                where,
                "DeepSpeed has no such key (it would ignore it)",
                f"did you mean zero_optimization.{near[0]}?" if near else "remove it",
            )
        name = names[key]
        if name not in ours:  # ZeRO++, ...: no group plans it
            out.passthrough.setdefault("zero_optimization", {})[key] = value
        elif value == "auto" and name not in HIDDEN_AUTOS:
            raise out.refuse(
                where, '"auto" is filled only for the sizes HF derives from the model', "give a value"
            )
        else:
            out.values[f"zero.{name}"] = None if value == "auto" else value
            out.origins[f"zero.{name}"] = where


def _offload(out: Imported, zero: dict[str, Any], stage: int) -> None:
    """offload_optimizer / offload_param -> the offload group: one device, path and pinning for both."""
    sections = {
        s: zero.pop(s) for s in OFFLOAD_KEYS if s in zero and (zero[s] or {}).get("device", "none") != "none"
    }
    for name in [s for s in OFFLOAD_KEYS if s in zero]:
        zero.pop(name)  # device none: nothing offloaded there
    if not sections:
        return
    first = next(iter(sections))
    for key in SHARED_OFFLOAD:
        seen = {s: sections[s].get(key) for s in sections if key in sections[s]}
        if len(set(map(str, seen.values()))) > 1:
            raise out.refuse(
                f"zero_optimization.offload_param.{key}",
                f"is not offload_optimizer's {seen['offload_optimizer']!r} (the offload group has one)",
                "give both the same",
            )
        if seen:
            where = f"zero_optimization.{next(iter(seen))}.{key}"
            if key == "device":
                out.pick("offload", seen[next(iter(seen))], where)
            else:
                out.set(f"offload.{key}", next(iter(seen.values())), where)
    out.set("offload.optimizer", "offload_optimizer" in sections, f"zero_optimization.{first}")
    if stage == 3 or "offload_param" in sections:
        out.set("offload.params", "offload_param" in sections, f"zero_optimization.{first}")
    for name, block in sections.items():
        for key, value in block.items():
            if key in SHARED_OFFLOAD:
                continue
            if key not in OFFLOAD_KEYS[name]:
                raise out.refuse(
                    f"zero_optimization.{name}.{key}",
                    "no config group takes it (offload)",
                    "remove it from the file",
                )
            out.set(f"offload.{OFFLOAD_KEYS[name][key]}", value, f"zero_optimization.{name}.{key}")


def _compile(out: Imported, ds: dict[str, Any]) -> None:
    section = ds.pop("compile", None)
    if section is None:
        return
    for key, value in section.items():
        if key != "deepcompile":
            raise out.refuse(
                f"compile.{key}", "no config group takes it (trainer.deepcompile)", "remove it from the file"
            )
        out.set("trainer.deepcompile", value, "compile.deepcompile")


def _known_to_deepspeed(out: Imported) -> None:
    """The pass-through, read by DeepSpeed's own config parser (as deepspeed.<key> is): a typo named
    with the closest key it knows, a value it refuses with its reason."""
    from pipeline.check import gate

    try:
        gate.deepspeed_knows(out.passthrough, prefix="")
    except ConfigError as e:
        fix = e.args[0].split(". Fix: ", 1)[1]
        key = f"{out.source.name}: {e.key}" if e.key != "deepspeed" else f"{KEY}={out.source.name}"
        raise ConfigError(key, e.problem, fix) from None


def _typed(out: Imported) -> None:
    """The values held to the schema's types (a string where a count goes), named by the JSON key."""
    body = OmegaConf.create()
    for key, value in out.values.items():
        try:
            OmegaConf.update(body, key, value, force_add=True)
            OmegaConf.merge(OmegaConf.structured(Config), body)
        except OmegaConfBaseException as e:
            problem = str(e).strip().splitlines()[0].rstrip(".")
            raise out.refuse(
                out.origins.get(key, key), problem, f"fix it in the file ({key} takes it)"
            ) from None
