"""`python -m pipeline [group=option ...] [key=value ...] [-m]`.

Every point of the command line is composed and checked first (one line per mistake, exit 2,
nothing started, nothing logged), its memory plan held against the machine it will run on;
then the MLflow store is made once; then Hydra runs the jobs. A dry sweep ends here, with one
table of its points.
"""

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from pipeline import launch
from pipeline.check import compose, ds_recipe, rules
from pipeline.config import Config
from pipeline.errors import ConfigError, Terminated, raise_terminated, why_stopped
from pipeline.sweep import search
from pipeline.sweep.info import point_name, varying_keys

if TYPE_CHECKING:  # the job's modules load torch: not before the command line is checked
    from pipeline.job import Outcome
    from pipeline.plan import Plan


def check_command_line(argv: list[str]) -> None:
    """compose -> rules -> model, data, machine -> memory, for every point; then one of: refuse, the
    dry sweep's table, or the store made once for the jobs Hydra runs next."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    points = _composed(args.overrides, args.multirun)
    first = points[0].cfg
    # The GPU checks apply where the points train: not here when they go to a cluster's nodes.
    runs_here = not launch.submits(first.launcher.name, args.multirun)
    dry_sweep = args.multirun and args.cfg is None and all(p.cfg.dry_run for p in points)
    _check(points, runs_here, refuse=not dry_sweep)
    if dry_sweep:
        _print_fit_table(points, runs_here)
        sys.exit(2 if any(p.error for p in points) else 0)
    _hold_to_memory(points, args.multirun)
    if args.cfg is None and first.tracking.enabled and not all(p.cfg.dry_run for p in points):
        _make_store(first, args.multirun)


def _composed(overrides: list[str], multirun: bool) -> list["Checked"]:
    try:
        composed = compose.compose_all(overrides, multirun)
    except ConfigError as e:
        _refuse([e])
    varying = varying_keys(overrides) if multirun else []
    return [Checked(point_name(o, varying), " ".join(o) or "defaults", cfg) for o, cfg in composed]


def _check(points: list["Checked"], runs_here: bool, refuse: bool) -> None:
    """Rules for every point first (instant), then the gate for each (it imports DeepSpeed, and asks
    the rules again: instant); one line per refused point."""
    if len(points) >= 10:  # a big sweep takes a while to check: say so
        print(
            f"checking {len(points)} points (rules, model and data, this machine, memory)...", file=sys.stderr
        )
    for check in (lambda point: rules.check(point.cfg), lambda point: _admit(point, runs_here)):
        _each(points, check)
        if refuse and any(p.error for p in points):
            _refuse([compose.at_point(p.error, p.overrides, len(points)) for p in points if p.error])


def _hold_to_memory(points: list["Checked"], multirun: bool) -> None:
    """A run that cannot fit is refused; a sweep's such point will be skipped, and says so."""
    if not multirun and points[0].misfit:
        _refuse([points[0].misfit])
    for p in points:
        if p.misfit:
            print(f"point {p.name} will be skipped: {p.misfit}", file=sys.stderr)


def _print_fit_table(points: list["Checked"], runs_here: bool) -> None:
    from pipeline.check import fit
    from pipeline.report import console

    rows = [(p.name, p.plan.memory if p.plan else None, p.error or p.misfit) for p in points]
    console.print_fit_table(rows, fit.Capacity.of(points[0].cfg, runs_here))


def _make_store(cfg: Config, multirun: bool) -> None:
    """The store, made once; and the sweep named by sweep.resume, if one is, must be in it."""
    from pipeline import track
    from pipeline.sweep.info import SweepInfo

    uri = track.tracking_uri(cfg)
    path = track.sqlite_path(uri)
    named = cfg.sweep.resume
    if multirun and named not in ("auto", "new") and SweepInfo.load(named) is None:
        store = track.Store.existing(uri)
        if not (store and store.find(named)):
            why = f"{named} is neither a sweep dir (with sweep.json) nor a run in the store"
            _refuse([ConfigError("sweep.resume", why, "give one of those, or auto / new")])
    shared = path and launch.submits(cfg.launcher.name, multirun) and track.network_filesystem(path.parent)
    if shared:
        print(
            f"note: the MLflow store {path} is a sqlite file on {shared}, a network filesystem: its "
            "locks are not safe for jobs writing from several nodes; set tracking.uri to your team's "
            "MLflow server (README, Tracking)",
            file=sys.stderr,
        )
    try:
        track.prepare(cfg)
    except ConfigError as e:
        _refuse([e])


@dataclass
class Checked:
    """A point of the command line as it is checked: its plan, or what refuses it."""

    name: str  # its values of the keys that vary
    overrides: str
    cfg: Config
    plan: "Plan | None" = None
    error: ConfigError | None = None  # breaks a rule, or this machine cannot run it
    misfit: ConfigError | None = None  # does not fit the GPU (or host) memory


def _each(points: list[Checked], check: Callable[[Checked], None]) -> None:
    for p in points:
        if p.error is None:
            try:
                check(p)
            except ConfigError as e:
                p.error = e


def _refuse(errors: list[ConfigError]) -> None:
    """One line per refused point, exit 2: nothing has started."""
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _admit(point: Checked, runs_here: bool) -> None:
    """The user's model and data, then this machine with the point's plan (cheap: meta-device
    sizes), then whether it fits."""
    from pipeline.check import gate, preflight

    with preflight.quiet():  # DeepSpeed's estimators announce the accelerator on import
        admitted = gate.admit(point.cfg, Path(point.cfg.outputs_dir), use_cpu=True, runs_here=runs_here)
    point.plan, point.misfit = admitted.plan, admitted.misfit


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> "Outcome":
    from pipeline import app

    return app.run(cfg)


def _remember_command() -> None:
    """The command as typed, for every run it makes (their provenance), in every process they run in."""
    from pipeline.track import provenance

    os.environ.setdefault(provenance.COMMAND_ENV, provenance.command_line())


def open_deepspeed_keys(argv: list[str]) -> list[str]:
    """`deepspeed.<key>=value` sets any DeepSpeed key, nested too: Hydra adds a key to the
    `deepspeed` dict only when told to (++), so the command line says it for the user."""
    return [f"++{a}" if a.startswith("deepspeed.") else a for a in argv]


def main() -> None:
    sys.argv[1:] = open_deepspeed_keys(sys.argv[1:])
    try:  # deepspeed_config=ds.json: the file's keys as a recipe of the groups (check/ds_recipe.py)
        sys.argv[1:] = ds_recipe.expand(sys.argv[1:])
    except ConfigError as e:
        _refuse([e])
    # Ctrl-C and a kill end the runs they stop as KILLED, saying why. SIGINT explicitly too: a
    # process started from a background job (or nohup) inherits it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_terminated)
    if search.requested(sys.argv[1:]):  # search=fastest drives trials of its own (pipeline/sweep/search)
        from pipeline.sweep.search import driver

        _remember_command()
        driver.main(sys.argv[1:])
        return
    check_command_line(sys.argv[1:])
    _remember_command()
    try:
        hydra_main()
    except KeyboardInterrupt as stop:
        from pipeline.sweep import callback

        callback.close_interrupted()
        print(f"stopped: {why_stopped(stop)}; the runs it ended are KILLED", file=sys.stderr)
        sys.exit(143 if isinstance(stop, Terminated) else 130)
    # A sweep's verdict, read here: Hydra turns an exception in its callback into a warning. (Its
    # module is loaded only where a sweep ran.)
    swept = sys.modules.get("pipeline.sweep.callback")
    if swept is not None and swept.failed():
        sys.exit(1)


if __name__ == "__main__":
    main()
