"""Registers the Slurm launcher with Hydra, which takes launcher classes only from hydra_plugins, and
the search path of the recipes a search writes (pipeline/sweep/search/recipes.py).

Hydra's plugin scan imports this module at every start, and every compose: it imports nothing heavy
(submitit's plugin defers submitit itself; launchers/slurm.py, with MLflow, loads when a sweep launches).
"""

from collections.abc import Sequence

from hydra.core.utils import JobReturn

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from pipeline.sweep.search.recipes import FoundRecipes  # noqa: F401 (Hydra finds plugins by module member)


class SlurmLauncher(SubmititSlurmLauncher):
    """conf/launcher/slurm.yaml's hydra.launcher._target_: submitit's, with every point given a result
    (a cancelled or crashed job's run closed in MLflow): launchers/slurm.py."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from launchers.slurm import SweepLaunch

        return SweepLaunch(self).launch(job_overrides, initial_job_idx)
