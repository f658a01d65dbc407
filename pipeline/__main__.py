"""`python -m pipeline [group=option ...] [key=value ...] [-m]`.

Every point of the command line is composed and checked first (one line per mistake, exit 2,
nothing started, nothing logged); then the MLflow store is made once; then Hydra runs the jobs.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

import launchers
from pipeline import compose, rules
from pipeline.config import Config
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # the job's modules load torch: not before the command line is checked
    from pipeline.job import Outcome


def check_command_line(argv: list[str]) -> None:
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    try:
        points = compose.compose_all(args.overrides, args.multirun)
    except ConfigError as e:
        _refuse(e)
    first = points[0][1]
    # The GPU checks apply where the points train: not here when they go to a cluster's nodes.
    runs_here = not launchers.submits(first.launcher.name, args.multirun)
    # Rules for every point first (instant), then the machine checks (they import DeepSpeed).
    for check in (rules.check, lambda cfg: _preflight(cfg, runs_here)):
        for overrides, cfg in points:
            try:
                check(cfg)
            except ConfigError as e:
                _refuse(compose.at_point(e, overrides, len(points)))
    trains = not all(cfg.dry_run for _, cfg in points)
    if args.cfg is None and trains and first.tracking.enabled:
        from pipeline import track

        track.prepare(first)


def _refuse(error: ConfigError) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _preflight(cfg: Config, runs_here: bool) -> None:
    """The user's model and data, then this machine with the point's plan (cheap: meta-device sizes)."""
    from pipeline import plan, preflight

    with preflight.quiet():  # DeepSpeed's estimators announce the accelerator on import
        plan.checked(cfg, Path(cfg.outputs_dir), use_cpu=True, runs_here=runs_here)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> "Outcome":
    from pipeline import app

    return app.run(cfg)


def main() -> None:
    check_command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
