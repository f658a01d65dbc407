"""Registers launchers/slurm.py with Hydra, which takes launcher classes only from hydra_plugins, and
the search path of the recipes a search writes (pipeline/sweep/search/recipes.py)."""

from launchers import slurm
from pipeline.sweep.search.recipes import FoundRecipes  # noqa: F401 (Hydra finds plugins by module member)


class SlurmLauncher(slurm.SlurmLauncher):
    """conf/launcher/slurm.yaml's hydra.launcher._target_."""
