"""The search's answer: its points ranked by step time, and the winner as a command line and as
a recipe, <outputs_dir>/conf/experiment/<name>.yaml, that `python -m pipeline experiment=<name>`
trains (the user's own choices, model, data, batch..., plus the winning knobs)."""

from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from pipeline.check.compose import CONF_DIR
from pipeline.report import table
from pipeline.report.table import Column, Figures, Row, View
from pipeline.sweep.search import recipes
from pipeline.sweep.search.ledger import Measured
from pipeline.track import RunState

ORDER = {RunState.FINISHED: 0, RunState.PRUNED: 1, RunState.SKIPPED: 2}


def _step_ms(r: Row) -> float | None:
    step_s = r.figures.avg_step_time_s
    return step_s * 1000 if r.finished and step_s is not None else None


# The ranking: a finished point's step time and throughput (only its own are measured whole), each
# trial's start-up and warm-up; its JSON keeps the knobs too.
RANKING = View(
    (
        Column("rank", lambda r: r.rank),
        Column("point", lambda r: r.name),
        table.STATE,
        Column("step_ms", _step_ms),
        Column("tokens_per_s", lambda r: r.figures.avg_tokens_per_s if r.finished else None),
        Column("model_tflops", lambda r: r.figures.model_tflops if r.finished else None),
        Column("startup_s", lambda r: r.figures.search_startup_s),
        Column("warmup_s", lambda r: r.figures.search_warmup_s),
        Column("peak_gib", lambda r: r.figures.peak_memory_gib),
        table.RUN_ID,
        table.HOW,
    ),
    strip=True,
)


def ranking(results: list[Measured]) -> list[Row]:
    """Finished points fastest first, then the pruned ones, then those never started or failed."""

    def key(r: Measured) -> tuple:
        return (ORDER.get(r.state, 3), r.step_s if r.step_s is not None else float("inf"))

    return [
        Row(
            r.name,
            r.state,
            r.run_id,
            Figures.of(r.metrics),
            r.how,
            rank=rank if r.state == RunState.FINISHED else None,
            knobs=r.point,
        )
        for rank, r in enumerate(sorted(results, key=key), start=1)
    ]


def kept(overrides: list[str]) -> list[str]:
    """The user's overrides that describe the training (not where it runs, logs, or the search)."""
    dropped = ("search", "outputs_dir", "tracking.", "hydra.", "sweep.", "launcher.", "dry_run", "check_fit")
    return [o for o in overrides if not o.lstrip("+~").startswith(dropped)]


def recipe(user: list[str], winner: list[str], header: str) -> str:
    """A recipe (@package _global_) of the user's overrides then the winner's: group picks as
    defaults overrides, values as keys; the body after the defaults, so a perf preset's micro batch
    yields to the winner's."""
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    defaults: dict[str, str] = {}
    body = OmegaConf.create()
    for o in OverridesParser.create().parse_overrides(user + winner):
        key, value = o.get_key_element().lstrip("+"), o.value()
        if key in groups:
            defaults[key] = value
        else:
            OmegaConf.update(body, key, value, force_add=True)
    doc: dict[str, Any] = {"defaults": [{f"override /{g}": v} for g, v in defaults.items()] + ["_self_"]}
    doc.update(OmegaConf.to_container(body))
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    return "# @package _global_\n" + "\n".join(lines) + "\n" + yaml.safe_dump(doc, sort_keys=False)


def write_recipe(outputs_dir: str, name: str, text: str, sweep_dir: Path) -> Path:
    """Into <outputs_dir>/conf/experiment/ (where Hydra finds it) and the search's dir."""
    path = recipes.recipe_dir(outputs_dir) / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (sweep_dir / f"{name}.yaml").write_text(text)
    return path


def train_command(outputs_dir: str, name: str) -> str:
    where = "" if outputs_dir == recipes.DEFAULT_OUTPUTS else f" outputs_dir={outputs_dir}"
    return f"python -m pipeline{where} experiment={name}"
