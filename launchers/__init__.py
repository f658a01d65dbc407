"""The cluster side: the Slurm launcher that submits a sweep's points (slurm.py) and the job side
that runs each point as Slurm tasks (slurm_job.py). Kept light: Hydra imports it at start-up."""


def submits(launcher: str, multirun: bool) -> bool:
    """A sweep with launcher=slurm trains on the cluster's nodes, not on this machine (without
    -m Hydra uses no launcher: the run trains here)."""
    return multirun and launcher == "slurm"
