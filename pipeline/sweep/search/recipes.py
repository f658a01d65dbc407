"""Where Hydra finds the recipes a search wrote: <outputs_dir>/conf/experiment/<name>.yaml.

A search path plugin, because Hydra reads `hydra.searchpath` from the primary config before the
command line is applied (an `${outputs_dir}` there would never see `outputs_dir=...`), and a
missing searchpath entry warns on every run. The plugin adds the folder only when it exists,
taking outputs_dir from the command line as the pipeline does (default: outputs, from the
working directory). Registered through hydra_plugins/zerosweep_launchers; imports nothing heavy.
"""

import sys
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

DEFAULT_OUTPUTS = "outputs"


def outputs_dir(argv: list[str]) -> Path:
    """The outputs_dir the command line gives (its last value), else the default."""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("outputs_dir=")]
    return Path(given[-1] if given else DEFAULT_OUTPUTS)


def recipe_dir(outputs: str | Path) -> Path:
    """The config root a search's recipes go under (its experiment/ folder holds them)."""
    return Path(outputs).absolute() / "conf"


class FoundRecipes(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        root = recipe_dir(outputs_dir(sys.argv[1:]))
        if root.is_dir():
            search_path.append("zerosweep-search", f"file://{root}")
