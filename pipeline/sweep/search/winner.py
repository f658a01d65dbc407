"""The search's answer: its points ranked by step time, and the winner as a command line and as
a recipe, <outputs_dir>/conf/experiment/<name>.yaml, that `python -m pipeline experiment=<name>`
trains (the user's own choices, model, data, batch..., plus the winning knobs)."""

from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from pipeline.check.compose import CONF_DIR
from pipeline.report.table import fmt
from pipeline.sweep.search import recipes
from pipeline.sweep.search.ledger import Measured

ORDER = {"FINISHED": 0, "PRUNED": 1, "SKIPPED": 2}
COLUMNS = ["rank", "point", "state", "step_ms", "tokens_per_s", "model_tflops", "startup_s", "warmup_s"]
COLUMNS += ["peak_gib", "run_id", "how"]


def ranking(results: list[Measured]) -> list[dict[str, Any]]:
    """Finished points fastest first, then the pruned ones, then those never started or failed."""

    def key(r: Measured) -> tuple:
        return (ORDER.get(r.state, 3), r.step_s if r.step_s is not None else float("inf"))

    rows = []
    for rank, r in enumerate(sorted(results, key=key), start=1):
        m = r.metrics
        rows.append(
            {
                "rank": rank if r.state == "FINISHED" else None,
                "point": r.name,
                "state": r.state,
                "step_ms": r.step_s * 1000 if r.step_s is not None else None,
                "tokens_per_s": m.get("avg_tokens_per_s") if r.state == "FINISHED" else None,
                "model_tflops": m.get("model_tflops") if r.state == "FINISHED" else None,
                "startup_s": m.get("search_startup_s"),
                "warmup_s": m.get("search_warmup_s"),
                "peak_gib": m.get("peak_memory_gib"),
                "run_id": r.run_id,
                "how": r.how,
                **{f"knob.{k}": v for k, v in r.point.items()},
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[fmt(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


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
