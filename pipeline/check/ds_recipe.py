"""A DeepSpeed JSON (check/ds_json.py reads it) as a Hydra recipe the command line names:
`deepspeed_config=ds.json` becomes `+deepspeed_config=<recipe>`. The recipe is a Hydra config
(`@package _global_`), so the command line still overrides any of it (and says so), and a run, a sweep,
a search or a Slurm job composes it as it composes any recipe: the command line only names it.
"""

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.check.ds_json import KEY, Imported, load


def expand(argv: list[str]) -> list[str]:
    """deepspeed_config=ds.json (a,b.json for a sweep over files) -> +deepspeed_config=<its recipe>,
    written under <outputs_dir>/conf/deepspeed_config/ where Hydra finds it, in every job that composes
    the command line again (here, a search's trials, Slurm's nodes, a rerun); the file's values come
    before the command line's, which win (each such key noted)."""
    from pipeline.sweep.search import recipes

    where = recipes.recipe_dir(recipes.outputs_dir(argv)) / KEY
    expanded = []
    for arg in argv:
        key, _, value = arg.partition("=")
        files = value.split(",")
        if key.lstrip("+") != KEY or not all(f.endswith(".json") or Path(f).is_file() for f in files):
            expanded.append(arg)
            continue
        others = [a for a in argv if a is not arg]
        names = []
        for file in files:
            imported = load(Path(file))
            for note in command_line_wins(imported, others):
                print(f"note: {note}", file=sys.stderr)
            names.append(write(imported, where))
        expanded.append(f"+{KEY}={','.join(names)}")
    return expanded


def command_line_wins(imported: Imported, overrides: list[str]) -> list[str]:
    """Where the command line sets what the file sets: the command line wins, and says so. A file's
    train_batch_size that the ranks and batch no longer make is refused, unless the command line
    changed them (then it wins)."""
    given = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides if "=" in o}
    name = imported.source.name
    notes = [
        f"{name}'s {imported.origins[key]} gives way to the command line's {given[key]}"
        for key in imported.origins
        if key in given
    ]
    total = imported.train_batch_size
    if total is None:
        return notes
    batch = (
        "trainer.micro_batch_size",
        "trainer.gradient_accumulation_steps",
        "trainer.nproc_per_node",
        "trainer.nnodes",
    )
    sizes = [_int(given[k].split("=", 1)[1]) if k in given else imported.values.get(k, 1) for k in batch]
    made = None if None in sizes else sizes[0] * sizes[1] * sizes[2] * sizes[3]
    if made == total:
        return notes
    if any(k in given for k in batch):
        return [*notes, f"{name}'s train_batch_size {total} gives way to the command line's batch and ranks"]
    raise imported.refuse(
        "train_batch_size",
        f"{total} is not train_micro_batch_size_per_gpu x gradient_accumulation_steps x ranks ({made})",
        'set trainer.nproc_per_node (and trainer.nnodes) to the ranks it was written for, or make it "auto"',
    )


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def write(imported: Imported, folder: Path) -> str:
    """The recipe into folder as <file stem>.yaml, its option name returned; a recipe of that name that
    says otherwise stays (runs name it), and this one gets the stem and a hash of its text."""
    header = f"{imported.source}: its keys in the config groups (python -m pipeline {KEY}=...)"
    text = imported.recipe(header)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", imported.source.stem)
    path = folder / f"{name}.yaml"
    if path.exists() and path.read_text() != text:
        name = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        path = folder / f"{name}.yaml"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)  # whole or not at all: another start may read it now
    return name


def inlined(overrides: list[str], outputs_dir: str) -> list[str]:
    """+deepspeed_config=<recipe> replaced by the recipe's own overrides (for a recipe that must stand
    alone, as a search's winner does)."""
    from pipeline.sweep.search import recipes

    out = []
    for o in overrides:
        key, _, name = o.partition("=")
        if key.lstrip("+") != KEY:
            out.append(o)
            continue
        doc = yaml.safe_load((recipes.recipe_dir(outputs_dir) / KEY / f"{name}.yaml").read_text())
        for entry in doc.pop("defaults"):
            if isinstance(entry, dict):
                ((group, option),) = entry.items()
                out.append(f"{group.removeprefix('override /')}={option}")
        out += [f"{'++' if k.startswith('deepspeed.') else ''}{k}={_hydra(v)}" for k, v in _leaves(doc)]
    return out


def _leaves(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            found += _leaves(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


def _hydra(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
