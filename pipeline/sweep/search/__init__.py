"""search=fastest: the fastest config that fits this model, data and machine (issue 17).

`python -m pipeline search=fastest model=... [search.trials=12] [launcher.gpu_mem_gib=80]` walks
the space of conf/search/fastest.yaml (ZeRO stage, offload, micro batch at the user's global batch,
activation checkpointing, perf presets, bucket sizes) with Optuna, in short trials: here one after
another, or with launcher=slurm as Slurm jobs, search.parallel at once (Optuna's ask/tell with several
trials open).

Optuna's own API, not the Hydra plugin: hydra-optuna-sweeper 1.3.0 (its latest) pins optuna<3
(current: 5.0), and a Hydra sweeper runs its jobs through the launcher in one process, so a trial
could not be watched and stopped mid-run (pruning) without reaching into the Trainer, and the
ask/tell loop could not skip points before they start. Here the driver (driver.py) asks Optuna for
a point, holds its memory plan against the GPU (points that cannot fit are recorded SKIPPED and
never started), runs it as a child process of its own (a one-point `python -m pipeline -m` job,
so it is a child run of the search's MLflow parent like any sweep point; with launcher=slurm that
child submits the trial's Slurm job, waits for it, and cancels it when stopped), reads its step times
from MLflow as they land, and stops it when Optuna's pruner says it cannot beat the best so far.
MLflow, not an Optuna storage file, is the search's memory: a rerun of an interrupted search
reopens its parent run and hands Optuna the trials it finished; a trial of the same composed
config already measured on this host (in any search) is reused, not trained again.

The winner becomes a recipe, <outputs_dir>/conf/experiment/<name>.yaml, beside the runs and the
store rather than in the project's conf/ (a search writes outputs, not sources; copy it into
conf/experiment/ to keep it). Hydra finds it there through the search path plugin in recipes.py,
so `python -m pipeline experiment=<name>` trains it.
"""

from hydra._internal.utils import get_args_parser


def requested(argv: list[str]) -> bool:
    """The command line picks a search (search=fastest), not a run."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return False
    keys = [o.split("=", 1) for o in args.overrides if "=" in o]
    return any(k.lstrip("+") == "search" and v not in ("null", "") for k, v in keys)
