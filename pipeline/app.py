"""The story of one job: plan it, check this machine, open its run, train its ranks, finish."""

import functools
import sys
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from launchers import slurm_job
from pipeline import config, data, fit, plan, summary, track
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.job import Job, Outcome
from pipeline.launch import Placement
from pipeline.point import Point
from pipeline.track import RunState


def failure_policy(task: Callable[[Config, Point], Outcome]) -> Callable[[DictConfig], Outcome]:
    """A point of a multirun that fails is reported and the sweep goes on (its end lists it and
    exits non-zero); a single run's error, Ctrl-C and SystemExit propagate."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Outcome:
        point = Point.current(cfg.tracking.run_name)
        try:
            return task(config.load(cfg), point)
        except Exception as e:
            if not point.multirun:
                raise
            print(f"point {point.name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return Outcome(RunState.FAILED)

    return wrapper


@failure_policy
def run(cfg: Config, point: Point) -> Outcome:
    the_plan = plan.checked(cfg, point.out, use_cpu=not torch.cuda.is_available())
    files = summary.write_plan(point.out, the_plan)
    if cfg.dry_run:
        summary.print_plan(the_plan, files)
        return Outcome(state=None)
    where = slurm_job.placement(cfg)
    misfit = fit.refusal(cfg, the_plan.memory, runs_here=True)
    if misfit:
        return skip(cfg, point, where, misfit)
    with open_run(cfg, point, where) as tracked:
        job = Job.of(cfg, the_plan, point.out, tracked.ref, where.checkpoint(point.out), data.prepare(cfg))
        result = where.launch(job)
        tracked.finish(result, files.all(), job.saved_models())
    summary.write_result(point.out, result)
    summary.print_result(cfg, point.name, result, files, job.saved_models(), tracked.run_id)
    return Outcome(RunState.FINISHED, result)


def open_run(cfg: Config, point: Point, where: Placement) -> track.TrackedRun | track.Untracked:
    """The point's MLflow run, if this process owns one."""
    if not (cfg.tracking.enabled and where.owns_run):
        return track.Untracked()
    params, tags = identity(cfg, point, where)
    return track.open_run(cfg, point.out, point.name, params, tags, resume=where.requeued)


def skip(cfg: Config, point: Point, where: Placement, misfit: ConfigError) -> Outcome:
    """A sweep's point that cannot fit the GPU (or host) memory: recorded, not trained."""
    print(f"point {point.name} SKIPPED: {misfit}", file=sys.stderr)
    if cfg.tracking.enabled and where.owns_run:
        track.record_skipped(cfg, point.name, *identity(cfg, point, where), reason=misfit.problem)
    return Outcome(RunState.SKIPPED)


def identity(cfg: Config, point: Point, where: Placement) -> tuple[dict[str, str], dict[str, str]]:
    """The params and tags a point's run is compared and found by."""
    return track.flat_params(cfg, point.choices), {**point.tags, **where.tags()}
