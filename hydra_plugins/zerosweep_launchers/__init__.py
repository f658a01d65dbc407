"""Registers launchers/slurm.py with Hydra, which takes launcher classes only from hydra_plugins."""

from launchers import slurm


class SlurmLauncher(slurm.SlurmLauncher):
    """conf/launcher/slurm.yaml's hydra.launcher._target_."""
