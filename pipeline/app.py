"""The story of one job: plan it, check this machine, open its run, train its ranks, finish."""

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline import config, track
from pipeline.check import gate
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.job import Job, Outcome, Summary
from pipeline.launch import slurm
from pipeline.launch.local import Placement
from pipeline.rank import checkpoints, data
from pipeline.report import console
from pipeline.sweep.point import Point
from pipeline.track import RunRecord, RunState
from pipeline.track.secrets import masked


def failure_policy(task: Callable[[Config, Point], Outcome]) -> Callable[[DictConfig], Outcome]:
    """A point of a multirun that fails while it trains is tried again (sweep.retries), then
    reported, and the sweep goes on (its end lists it and exits non-zero); one refused by the
    checks is not tried again. A Slurm job of several tasks is not tried again in place: its
    outcome asks the driver for a new job. A single run's error, Ctrl-C and SystemExit propagate."""

    @functools.wraps(task)
    def wrapper(node: DictConfig) -> Outcome:
        point = Point.current(node.tracking.run_name)
        cfg = config.load(node)
        in_place = slurm.placement(cfg).retries_in_place
        tries = 1 + cfg.sweep.retries if point.multirun and in_place else 1
        for attempt in range(1, tries + 1):
            try:
                return task(cfg, point)
            except Exception as e:
                if not point.multirun:
                    raise
                print(f"point {point.name} FAILED: {type(e).__name__}: {masked(str(e))}", file=sys.stderr)
                if isinstance(e, ConfigError):
                    return Outcome(RunState.FAILED)
                if attempt < tries:
                    print(f"point {point.name}: try {attempt + 1} of {tries}", file=sys.stderr)
        return Outcome(RunState.FAILED, retry=not in_place)

    return wrapper


@failure_policy
def run(cfg: Config, point: Point) -> Outcome:
    admitted = gate.admit(cfg, point.out, use_cpu=not torch.cuda.is_available())
    files = console.write_plan(point.out, admitted.plan)
    if cfg.dry_run:
        console.print_plan(admitted.plan, files)
        return Outcome(state=None)
    where = slurm.placement(cfg)
    if admitted.misfit:
        return skip(cfg, point, where, admitted.misfit)
    before = earlier_attempts(cfg, point)
    if before and before[-1].state == RunState.FINISHED:
        return finished_before(point, before[-1])
    with open_run(cfg, point, where, before) as tracked:
        last = where.checkpoint(point.out) or carried_over(before)
        resume_from = checkpoints.for_ranks(last, cfg, where.ranks)
        job = Job.of(cfg, admitted.plan, point.out, where.ranks, tracked.ref, resume_from, data.prepare(cfg))
        summary = where.launch(job)
        tracked.finish(summary, files.all(), job.saved_models())
    console.write_result(point.out, summary)
    console.print_result(cfg, point.name, summary, files, job.saved_models(), tracked.run_id)
    return Outcome(RunState.FINISHED, summary)


def open_run(
    cfg: Config, point: Point, where: Placement, before: list[RunRecord]
) -> track.TrackedRun | track.Untracked:
    """The point's MLflow run, if this process owns one: a new try of the point, carrying on from
    the last one (a Slurm requeue reopens its own run instead). In a job across nodes, the other
    nodes sample their system metrics into it."""
    if not cfg.tracking.enabled:
        return track.Untracked()
    if not where.owns_run:
        if not (where.samples_node and cfg.tracking.system_metrics):
            return track.Untracked()
        job = where.tags()[track.SLURM_JOB]
        return track.NodeSampling(track.Store.of(cfg), point.out, job, str(where.node))
    params, tags = identity(cfg, point, where)
    tags[track.ATTEMPT] = str(len(before) + 1)
    if before:
        tags[track.CARRIES_ON] = before[-1].run_id
    return track.open_run(
        cfg, point.out, point.name, params, tags, point.overrides, where.requeued_after(), where.node
    )


def earlier_attempts(cfg: Config, point: Point) -> list[RunRecord]:
    """This point's runs in its sweep so far (earlier tries, or a sweep run before and stopped)."""
    if point.sweep is None:
        return []
    key = track.point_key(cfg, track.flat_params(cfg, point.choices))
    return track.Store(point.sweep.tracking_uri).attempts(
        point.sweep.experiment_id, point.sweep.parent_run_id, key
    )


def finished_before(point: Point, run: RunRecord) -> Outcome:
    """A point that finished in an earlier run of its sweep is not trained again."""
    print(f"point {point.name} FINISHED before (MLflow run {run.run_id}): not trained again")
    return Outcome(RunState.FINISHED, Summary.of(run.metrics))


def carried_over(before: list[RunRecord]) -> str | None:
    """The newest complete checkpoint of the last try that left one, to carry on from (a try that
    failed before its first checkpoint does not throw away an earlier try's)."""
    for run in reversed(before):
        found = track.OUTPUT_DIR in run.tags and checkpoints.newest(Path(run.tags[track.OUTPUT_DIR]))
        if found:
            return found
    return None


def skip(cfg: Config, point: Point, where: Placement, misfit: ConfigError) -> Outcome:
    """A sweep's point that cannot fit the GPU (or host) memory: recorded, not trained."""
    print(f"point {point.name} SKIPPED: {misfit}", file=sys.stderr)
    if cfg.tracking.enabled and where.owns_run:
        track.record_skipped(cfg, point.name, *identity(cfg, point, where), reason=misfit.problem)
    return Outcome(RunState.SKIPPED)


def identity(cfg: Config, point: Point, where: Placement) -> tuple[dict[str, str], dict[str, str]]:
    """The params and tags a point's run is compared and found by."""
    params = track.flat_params(cfg, point.choices)
    return params, {**point.tags, **where.tags(), track.POINT_KEY: track.point_key(cfg, params)}
