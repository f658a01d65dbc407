"""Where a point's ranks run (the job process): here, one rank in-process or N under torch's elastic
launcher (local.py), or as the tasks of a Slurm job (slurm.py). The Slurm side that submits a
sweep's points is the Hydra launcher in launchers/slurm.py. Kept light: the command line asks
`submits` before anything heavy is imported."""


def submits(launcher: str, multirun: bool) -> bool:
    """A sweep with launcher=slurm trains on the cluster's nodes, not on this machine (without
    -m Hydra uses no launcher: the run trains here)."""
    return multirun and launcher == "slurm"
