"""A point's run over its life: opened (or reopened after a requeue) by the job, appended to by
rank 0 (RunRef, MetricLogger), finished or failed by itself (TrackedRun); its params and identity."""

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric
from mlflow.environment_variables import MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from pipeline.config import Config
from pipeline.errors import Hung, why_stopped
from pipeline.track import provenance
from pipeline.track.sampler import Sampler
from pipeline.track.secrets import masked
from pipeline.track.store import (
    LOST_STEPS,
    REQUEUED_AFTER,
    RUN_ID_FILE,
    SKIPPED,
    SLURM_JOB,
    RunState,
    Store,
    prepared,
)

if TYPE_CHECKING:  # pipeline.job imports this package
    from pipeline.job import Summary


@dataclass
class RunRef:
    """What a training rank needs to append metrics to its job's run; pickles to every rank."""

    uri: str
    run_id: str
    # Steps up to this one were logged by an earlier attempt of the job (before a requeue).
    after_step: int = 0


# How many ranks train a point, and so its accumulation, are where it runs, not what it trains: a
# point carried on with another GPU count at the same global batch is the same point.
PLACEMENT = ("trainer.nproc_per_node", "trainer.nnodes", "trainer.gradient_accumulation_steps")


def point_key(cfg: Config, params: Mapping[str, str]) -> str:
    """A point's identity: its composed config (params: flat_params of cfg) with its global batch in
    place of its placement, without the sweep's own settings."""
    kept = {k: v for k, v in params.items() if not k.startswith("sweep.") and k not in PLACEMENT}
    kept["global_batch"] = str(cfg.global_batch)
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def flat_params(cfg: Config, choices: Mapping[str, str | None]) -> dict[str, str]:
    """Every leaf of the composed config as 'group.key', plus each group's choice and lr; masked
    (tracking.uri's password): a point's key (point_key) stays the same when the password changes."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = masked(json.dumps(node) if isinstance(node, (list, dict)) else str(node))

    walk("", tree)
    flat.update({group: str(choice) for group, choice in choices.items() if choice is not None})
    flat["lr"] = str(cfg.optimizer.lr)
    return flat


class TrackedRun:
    """A point's MLflow run over its life, as a context manager: system metrics are sampled into
    it while the ranks train; `finish` logs the summary and artifacts; anything that escapes
    fails it with the traceback (KILLED on Ctrl-C). SystemExit leaves it RUNNING: that is
    submitit's exit after a checkpoint and requeue, and the requeued job reopens it."""

    def __init__(
        self, store: Store, run_id: str, after_step: int, system_metrics: bool, node: str | None, out: Path
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.out = out
        self.ref = RunRef(store.uri, run_id, after_step)
        self._monitor = Sampler(run_id, store.uri, 2, node) if system_metrics else None

    def __enter__(self) -> "TrackedRun":
        if self._monitor:
            self._monitor.start()
        return self

    def finish(self, summary: "Summary", artifacts: Iterable[Path], folders: Iterable[Path] = ()) -> None:
        """The closing figures, the plan's files, and whole folders (the trained model) by their name."""
        self._stop_sampling()
        self.store.log_metrics(self.run_id, summary.metrics(), summary.steps)
        self.store.log_files(self.run_id, artifacts)
        for folder in folders:
            self.store.log_folder(self.run_id, folder)
        self.store.end(self.run_id, RunState.FINISHED)

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> bool:
        self._stop_sampling()
        if error is not None and not isinstance(error, SystemExit):
            state = RunState.KILLED if isinstance(error, KeyboardInterrupt) else RunState.FAILED
            if isinstance(error, Hung) and error.stacks:
                self.store.log_text(self.run_id, error.stacks, "hang.txt")
            why = "".join(traceback.format_exception(kind, error, tb))
            if isinstance(error, KeyboardInterrupt):  # the reason last, where error.txt keeps it
                why += f"\nstopped: {why_stopped(error)}"
            elif (full := disk_full(self.out)) is not None:
                why += f"\n{full}"
            self.store.end(self.run_id, state, why)
        return False

    def _stop_sampling(self) -> None:
        if self._monitor:
            self._monitor.finish()
            self._monitor = None


# Below this much room, a failure is told as the full disk it most likely is: torch's checkpoint
# writer says only "file write failed".
FULL_DISK_BYTES = 16 * 2**20


def disk_full(out: Path) -> str | None:
    """'no space left on device: ...' where the run's dir (its checkpoints) has next to no room."""
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return None
    if free >= FULL_DISK_BYTES:
        return None
    return (
        f"no space left on device: {out} has {free / 2**20:.1f} MiB free (its checkpoints are written there)"
    )


class Untracked:
    """TrackedRun's stand-in where this process logs nothing (tracking off, or a Slurm task that
    is not rank 0)."""

    run_id = None
    ref = None

    def __enter__(self) -> "Untracked":
        return self

    def finish(self, summary: "Summary", artifacts: Iterable[Path], folders: Iterable[Path] = ()) -> None:
        pass

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> bool:
        return False


class NodeSampling(Untracked):
    """In a job across nodes, the first task of each node but rank 0's: its node's system metrics go
    into the run that rank 0 opened for this Slurm job (found by the id file rank 0 saves beside the
    checkpoints, and the run's job tag: not an earlier job's run of the same point)."""

    def __init__(self, store: Store, out: Path, job: str, node: str, wait_s: float = 120) -> None:
        self._store, self._saved, self._job = store, out / RUN_ID_FILE, job
        self._node, self._wait_s = node, wait_s
        self._monitor: Sampler | None = None

    def __enter__(self) -> "NodeSampling":
        deadline = time.monotonic() + self._wait_s
        while (run_id := self._run_of_job()) is None and time.monotonic() < deadline:
            time.sleep(1)
        if run_id is None:
            print(f"no run of this job after {self._wait_s:.0f} s: {self._node}'s system metrics not logged")
        else:
            self._monitor = Sampler(run_id, self._store.uri, 2, self._node)
            self._monitor.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> bool:
        if self._monitor:
            self._monitor.finish()
        return False

    def _run_of_job(self) -> str | None:
        """Rank 0's run of this job, once it is open."""
        run_id = self._saved.read_text().strip() if self._saved.exists() else None
        run = run_id and self._store.find(run_id)
        ours = run and run.state == RunState.RUNNING and run.tags.get(SLURM_JOB) == self._job
        return run_id if ours else None


def record_skipped(cfg: Config, name: str, params: dict[str, str], tags: dict[str, str], reason: str) -> str:
    """A point that was not trained (it could not fit), as a closed run that says why."""
    store, experiment_id = prepared(cfg)
    run_id = store.create_run(experiment_id, name, {**tags, SKIPPED: reason}, params)
    store.end(run_id, RunState.KILLED, f"skipped, not trained: {reason}")
    return run_id


def open_run(
    cfg: Config,
    out: Path,
    name: str,
    params: dict[str, str],
    tags: dict[str, str],
    overrides: list[str],
    requeued_after: str = "",
    node: str | None = None,
) -> TrackedRun:
    """The job's run: a requeued job (requeued_after: what ended its earlier attempts) reopens the
    run whose id it saved in its output dir, beside its checkpoints, and says why; any other job
    creates one, with what made it (provenance: the code, software and machine here, and the
    command with its overrides), and saves its id there. node: the name its system metrics go
    under, in a job across nodes."""
    store, experiment_id = prepared(cfg)
    saved = out / RUN_ID_FILE
    sampled = cfg.tracking.system_metrics
    if requeued_after and saved.exists():
        run_id = saved.read_text().strip()
        store.tag(run_id, {REQUEUED_AFTER: requeued_after})
        return TrackedRun(store, run_id, store.reopen(run_id), sampled, node, out)
    run_id = store.create_run(experiment_id, name, tags, params)
    saved.write_text(run_id + "\n")
    provenance.write(store, run_id, provenance.collect(overrides))
    return TrackedRun(store, run_id, 0, sampled, node, out)


class MetricLogger:
    """Appends metrics to a run from training rank 0, asynchronously and in batches (MLflow's own
    buffering) so steps never wait on I/O; flush() makes everything logged reach the store.

    MLflow's logger drops a batch it could not write (a store busy for longer than a write waits,
    20 s on sqlite), and of merged batches it reports only the first as failed. So each flush reads
    back the steps logged since the last one, writes the missing ones again, with backoff, for up to
    a minute (RETRY_S), and counts those still refused then (lost_steps: the run's tag and its
    closing summary say how many)."""

    RETRY_S = (1, 2, 4, 8, 16, 32)

    def __init__(self, ref: RunRef, buffer_s: int) -> None:
        mlflow.set_tracking_uri(ref.uri)
        # Read by MLflow's logging thread before each batch (one write a step cost ~7 ms of this
        # process's Python on sqlite, one write for 100 steps ~0.5 ms a step: RESULTS.md).
        os.environ[MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS.name] = str(buffer_s)
        self.store = Store(ref.uri)
        self.ref = ref
        self.lost_steps = 0
        self._sent: dict[tuple[str, int], tuple[float, int]] = {}  # (key, step): (value, ms)

    def __call__(self, values: dict[str, float], step: int) -> None:
        if step > self.ref.after_step:
            at_ms = int(time.time() * 1000)
            self.store.log_metrics(self.ref.run_id, values, step, synchronous=False, at_ms=at_ms)
            self._sent.update({(key, step): (float(value), at_ms) for key, value in values.items()})

    def flush(self) -> None:
        mlflow.flush_async_logging()
        sent, self._sent = self._sent, {}
        missing = self._missing(sent)
        for wait_s in self.RETRY_S:
            if not missing:
                return
            steps = len({step for _, step in missing})
            print(
                f"the MLflow store did not take {steps} steps' metrics: again in {wait_s} s", file=sys.stderr
            )
            time.sleep(wait_s)
            missing = self._missing(missing) if self._write(missing) else missing
        steps = len({step for _, step in missing})
        self.lost_steps += steps
        print(
            f"warning: {steps} steps' metrics could not be written to the MLflow store: lost", file=sys.stderr
        )
        with contextlib.suppress(MlflowException):
            self.store.tag(self.ref.run_id, {LOST_STEPS: str(self.lost_steps)})

    def _missing(
        self, sent: dict[tuple[str, int], tuple[float, int]]
    ) -> dict[tuple[str, int], tuple[float, int]]:
        """What of sent the run does not have (all of it, where the store cannot be read now)."""
        try:
            have = {
                (key, step)
                for key in {k for k, _ in sent}
                for step, _ in self.store.history(self.ref.run_id, key)
            }
        except MlflowException:
            return sent
        return {point: value for point, value in sent.items() if point not in have}

    def _write(self, metrics: dict[tuple[str, int], tuple[float, int]]) -> bool:
        items = [Metric(key, value, at_ms, step) for (key, step), (value, at_ms) in metrics.items()]
        try:
            for i in range(0, len(items), 1000):  # a REST store takes at most 1000 metrics a call
                self.store.client.log_batch(self.ref.run_id, metrics=items[i : i + 1000])
            return True
        except MlflowException:
            return False
