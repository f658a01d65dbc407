"""Compose every point of a command line before any of them runs.

Hydra would find a bad value only when its job starts (for a sweep: after the earlier points
have trained). Here each point of the sweep is composed and checked first, and any problem
becomes one ConfigError line naming the key.
"""

import difflib
import math
import re

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import config
from pipeline.config import PROJECT_ROOT, Config
from pipeline.errors import ConfigError

CONF_DIR = PROJECT_ROOT / "conf"


def sweep_points(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job Hydra will start, in its order (BasicSweeper's expansion)."""
    if not multirun:
        return [list(overrides)]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(
            "overrides", _first_line(str(e)), "check the command line's key=value syntax"
        ) from None
    return BasicSweeper.split_arguments(parsed, None)[0]


def compose_point(overrides: list[str]) -> Config:
    """Compose one job's config exactly as @hydra.main will, held to the schema."""
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            composed = compose("config", overrides=overrides)
        # '+key=value' and recipes may add keys Hydra accepts; the schema does not.
        return config.load(OmegaConf.to_container(composed))
    except MissingConfigException as e:
        raise _missing_option(e) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise _explain(e) from None
    except ValueError as e:  # a group given no option: zero=null
        empty = [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in _groups()]
        if not empty:
            raise ConfigError("overrides", _first_line(str(e)), "check the command line") from None
        raise ConfigError(empty[0], "needs an option, not null", _choose(empty[0])) from None


def choices(overrides: list[str]) -> dict[str, str | None]:
    """Each group's chosen option (model: llama_tiny, ...) for a command line that composes."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        composed = compose("config", overrides=overrides, return_hydra_config=True)
    return dict(composed.hydra.runtime.choices)


def compose_all(overrides: list[str], multirun: bool) -> list[tuple[list[str], Config]]:
    return [(point, compose_point(point)) for point in sweep_points(overrides, multirun)]


def at_point(error: ConfigError, point: str, points: int) -> ConfigError:
    """Name the sweep point an error belongs to, when there are several."""
    if points > 1:
        error.args = (f"{error.args[0]} (sweep point: {point})",)
    return error


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].rstrip(".")


def _missing_option(e: MissingConfigException) -> ConfigError:
    m = re.search(r"Could not find '([^/']+)/([^']*)'", str(e))
    if not m:
        return ConfigError("config", _first_line(str(e)), "check the config name")
    group, option = m.groups()
    return ConfigError(group, f"no option '{option}'" if option else "needs an option", _choose(group))


def _groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()}


def _choose(group: str) -> str:
    return f"choose one of {', '.join(sorted(p.stem for p in (CONF_DIR / group).glob('*.yaml')))}"


def _explain(e: Exception) -> ConfigError:
    error = _explain_key(_keyed_cause(e))
    recipe = re.match(r"In '([^']+)'", str(e))  # a value from a recipe file, not the command line
    if recipe:  # conf/experiment/mine.yaml, or a recipe on hydra.searchpath
        ours = CONF_DIR / f"{recipe.group(1)}.yaml"
        where = f"conf/{recipe.group(1)}.yaml" if ours.is_file() else f"the recipe {recipe.group(1)}"
        fix = str(error).split(". Fix: ", 1)[1]
        return ConfigError(error.key, f"{error.problem} in {where}", f"in {where}, {fix}")
    return error


def _explain_key(cause: BaseException) -> ConfigError:
    key = getattr(cause, "full_key", None)
    problem = _first_line(str(cause))
    if key:
        if "not in" in problem or "not in struct" in problem:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            known = _known_keys(parent)
            near = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
            fix = (
                f"did you mean {parent + '.' if parent else ''}{near[0]}?"
                if near
                else f"use one of {', '.join(known)}"
            )
            return ConfigError(key, "no such key", fix if known else "remove it")
        value = getattr(cause, "value", None)
        if type(value) is float and "to Integer" in problem:  # a whole one (5e8) is taken: config.py
            example = f", e.g. {key}={round(value)}" if math.isfinite(value) else ""
            return ConfigError(key, f"{value} is not a whole number", f"write a whole number{example}")
        return ConfigError(key, problem, f"give {key} a value of the right type (see pipeline/config.py)")
    if "Ambiguous value" in problem:
        arg = re.search(r"'([^']+)'", problem)
        return ConfigError(
            arg.group(1).split("=")[0] if arg else "overrides",
            "several values without -m",
            "add -m (--multirun) to sweep over them",
        )
    return ConfigError("overrides", problem, "check the command line")


def _keyed_cause(e: BaseException) -> BaseException:
    """The OmegaConf error that names the key, wherever Hydra's composition error chains it."""
    link: BaseException | None = e
    while link is not None:
        if isinstance(link, OmegaConfBaseException) and getattr(link, "full_key", None):
            return link
        link = link.__cause__ or link.__context__
    return e


def _known_keys(parent: str) -> list[str]:
    node = OmegaConf.structured(Config)
    for part in filter(None, parent.split(".")):
        node = node[part]
    return sorted(node.keys()) if isinstance(node, DictConfig) else []
