"""`python -m pipeline [group=option ...] [key=value ...] [-m]`.

Every point of the command line is composed and checked first (one line per mistake, exit 2,
nothing started, nothing logged); then the MLflow store is made once; then Hydra runs the jobs.
"""
import sys

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from pipeline import compose, rules
from pipeline.errors import ConfigError


def check_command_line(argv: list) -> None:
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    try:
        points = compose.compose_all(args.overrides, args.multirun)
        for _, cfg in points:
            rules.check(cfg)
        _preflight(points)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.cfg is None and not all(cfg.dry_run for _, cfg in points) and points[0][1].tracking.enabled:
        from pipeline import track

        track.prepare(points[0][1])


def _preflight(points) -> None:
    """Machine checks, each point with its expected NVMe need (plans are cheap: meta-device sizes)."""
    from pathlib import Path

    from pipeline import plan, preflight

    for _, cfg in points:
        nvme = plan.make(cfg, Path(cfg.outputs_dir), use_cpu=True).memory["nvme"]
        preflight.check(cfg, nvme)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from pipeline import app

    app.run(cfg)


def main() -> None:
    check_command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
