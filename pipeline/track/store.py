"""The MLflow store as the pipeline uses it: its URI, the runs read back (RunRecord, RunState),
and its making, once, before any run."""

import base64
import functools
import logging
import os
import socket
import sqlite3
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.track.secrets import masked

RUN_ID_FILE = "mlflow_run_id"
# The tags the pipeline writes and finds runs by, each named once, here.
# How a sweep's runs are found.
PARENT = "mlflow.parentRunId"
SLURM_JOB = "zerosweep.slurm_job_id"
ROLE = "zerosweep.role"
ROLE_SWEEP = "sweep"  # ROLE's value on a sweep's (or a search's) parent run
SKIPPED = "zerosweep.skipped"
OUTPUT_DIR = "zerosweep.output_dir"
# A point's command-line overrides, and its number in its sweep.
OVERRIDES = "zerosweep.overrides"
JOB_NUM = "zerosweep.job_num"
# A sweep's point across attempts and reruns: its composed config (point_key), its try, and the
# earlier run it carries on from (that run's newest checkpoint).
POINT_KEY = "zerosweep.point_key"
ATTEMPT = "zerosweep.attempt"
CARRIES_ON = "zerosweep.carries_on"
# Steps whose metrics the store refused for good (after retries): a run that lost some says so.
LOST_STEPS = "zerosweep.lost_metric_steps"
# A run reopened by its requeued Slurm job: what ended the earlier attempts (NODE_FAIL, PREEMPTED...).
REQUEUED_AFTER = "zerosweep.requeued_after"
# A sweep's parent: its command line without sweep.* keys, to find it again when it is rerun.
SWEEP_KEY = "zerosweep.sweep_key"
# On a sweep's parent: its points' keys (POINT_KEY), sorted: a sweep of more points carries on in it.
SWEEP_POINTS = "zerosweep.sweep_points"
# The dir a sweep's points and its report are in (on the parent and on each point's run).
SWEEP_DIR = "zerosweep.sweep_dir"
# On a sweep's parent: its points' Slurm job ids, and the map of those jobs to their submitit folders
# (a resumed sweep waits for the jobs an earlier driver queued).
SLURM_JOB_IDS = "zerosweep.slurm_job_ids"
SLURM_JOBS = "zerosweep.slurm_jobs"
# The process that owns a run outside Slurm (owner_tags), so that a later start can close it if it died.
HOST = "zerosweep.host"
PID = "zerosweep.pid"
PID_STARTED = "zerosweep.pid_started"
# search=fastest: its parent (SEARCH), its winner, and on each trial: its composed config (a hash: same
# key, same training), its knob values (JSON), and why it was stopped early.
SEARCH = "zerosweep.search"
SEARCH_WINNER = "zerosweep.search_winner"
TRIAL_KEY = "zerosweep.search_trial"
SEARCH_POINT = "zerosweep.search_point"
PRUNED = "zerosweep.pruned"


class RunState(str, Enum):
    """MLflow's run states, as the pipeline sets and reads them, and the pipeline's own two, both
    stored as KILLED with a tag that says why: SKIPPED, a point that could not fit (never started),
    and PRUNED, a search trial stopped early because it could not beat the best so far."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    SKIPPED = "SKIPPED"
    PRUNED = "PRUNED"

    @property
    def ok(self) -> bool:
        """Nothing went wrong: it trained to the end, or was rightly never started or stopped early."""
        return self in (RunState.FINISHED, RunState.SKIPPED, RunState.PRUNED)

    def __str__(self) -> str:
        return self.value


SQLITE = "sqlite:///"


def store_uri(outputs_dir: str | Path, uri: str | None = None) -> str:
    """The one URI rule, shared with the UI and report commands that have no composed config."""
    return uri or f"{SQLITE}{Path(outputs_dir).absolute() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite store; None for a server."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


# Filesystems shared over the network (`stat -f -c %T`, /proc/mounts), where sqlite's file locks are
# not safe for writers on several nodes (sqlite.org/faq.html#q5).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "ceph", "beegfs", "fuse.")


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network filesystem path is on, or None (a local disk). mounts: the text of
    /proc/mounts (read when not given)."""
    if mounts is None:
        mounts = Path("/proc/mounts").read_text()
    path = path.absolute()
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if path.is_relative_to(point) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind if kind.startswith(NETWORK_FILESYSTEMS) else None


def tracking_uri(cfg: Config) -> str:
    return store_uri(cfg.outputs_dir, cfg.tracking.uri)


@dataclass
class RunRecord:
    """A run as the table, the report and the UI read it."""

    run_id: str
    name: str
    experiment_id: str
    state: RunState
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Run) -> "RunRecord":
        info, data = run.info, run.data
        state = RunState.SKIPPED if SKIPPED in data.tags else RunState(info.status)
        return cls(
            info.run_id, info.run_name, info.experiment_id, state, data.params, data.metrics, data.tags
        )

    @property
    def trial_state(self) -> RunState:
        """As the search counts it: PRUNED where it stopped the trial early. Only the search reads
        it so: the sweep's table and report show such a run KILLED, as MLflow does."""
        return RunState.PRUNED if self.state == RunState.KILLED and PRUNED in self.tags else self.state

    @property
    def reason(self) -> str:
        """Why it was pruned or skipped, as its tag says ('' for any other run)."""
        return self.tags.get(PRUNED if self.trial_state == RunState.PRUNED else SKIPPED, "")


class Store:
    """One MLflow store (sqlite file or server), as the pipeline uses it: the one door to it, so
    every name, param, tag and text artifact written through it is masked (secrets.masked)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)
        if masked(uri) != uri:
            _masking_output()

    @classmethod
    def of(cls, cfg: Config) -> "Store":
        """The store a composed config tracks to."""
        return cls(tracking_uri(cfg))

    @classmethod
    def existing(cls, uri: str) -> "Store | None":
        """The store at uri, for reading; None where it is a sqlite file that is not there (opening
        it would make one)."""
        path = sqlite_path(uri)
        return None if path is not None and not path.exists() else cls(uri)

    def experiment_id(self, name: str) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp else None

    def create_experiment(self, name: str, artifact_location: str | None) -> str:
        experiment_id = self.client.create_experiment(name, artifact_location=artifact_location)
        self.mark_training(experiment_id)
        return experiment_id

    def mark_training(self, experiment_id: str) -> None:
        """MLflow 3's UI opens an experiment on its GenAI (traces) page unless it is tagged as
        model training."""
        self.client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        tags = {k: masked(v) for k, v in tags.items()}
        run_id = self.client.create_run(experiment_id, run_name=masked(name), tags=tags).info.run_id
        items = [Param(k, masked(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # a REST store takes at most 100 params a call
            self.client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def reopen(self, run_id: str) -> int:
        """A requeued job's run, RUNNING again; returns the last step it logged, so that the steps
        trained again after the checkpoint are not logged twice."""
        self.client.update_run(run_id, status=RunState.RUNNING.value)
        return max((step for step, _ in self.history(run_id, "loss")), default=0)

    def end(self, run_id: str, state: RunState, error: str | None = None) -> None:
        """Close a run; an error's last lines are kept beside it (error.txt). The run is closed even
        where error.txt cannot be written (a full disk): never left RUNNING for a later start to
        blame on the OOM killer."""
        try:
            if error is not None:
                self.log_text(run_id, "\n".join(error.splitlines()[-50:]) + "\n", "error.txt")
        finally:
            self.client.set_terminated(run_id, state.value)

    def log_metrics(
        self,
        run_id: str,
        values: Mapping[str, float],
        step: int,
        synchronous: bool = True,
        at_ms: int | None = None,
    ) -> None:
        """One step's values (at_ms: when it was measured, now by default)."""
        now = at_ms or int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(run_id, metrics=metrics, synchronous=synchronous)

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, masked(v)) for k, v in tags.items()])

    def untag(self, run_id: str, key: str) -> None:
        self.client.delete_tag(run_id, key)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, masked(text), path)

    def log_dict(self, run_id: str, value: Any, path: str) -> None:
        self.client.log_dict(run_id, value, path)

    def log_files(self, run_id: str, paths: Iterable[Path], folder: str | None = None) -> None:
        """A text file that holds a password (Hydra's config.yaml keeps tracking.uri as typed) is
        logged masked; the file itself, on this machine, is left as it is."""
        for path in paths:
            text = _text(path)
            if text is not None and masked(text) != text:
                self.log_text(run_id, text, f"{folder}/{path.name}" if folder else path.name)
            else:
                self.client.log_artifact(run_id, str(path), folder)

    def log_folder(self, run_id: str, folder: Path) -> None:
        """A whole directory (a saved model), as an artifact folder of the same name."""
        self.client.log_artifacts(run_id, str(folder), folder.name)

    def download(self, run_id: str, path: str, into: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(into)))

    def get(self, run_id: str) -> RunRecord:
        return RunRecord.of(self.client.get_run(run_id))

    def find(self, run_id: str) -> RunRecord | None:
        """The run, or None where the store has no run of that id."""
        try:
            return self.get(run_id)
        except MlflowException:
            return None

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, by step."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def search(
        self, experiment_id: str, where: str, newest_first: bool = False, limit: int = 10000
    ) -> list[RunRecord]:
        order = "DESC" if newest_first else "ASC"
        runs = self.client.search_runs(
            [experiment_id], where, order_by=[f"attributes.start_time {order}"], max_results=limit
        )
        return [RunRecord.of(r) for r in runs]

    def children(self, experiment_id: str, parent_run_id: str) -> list[RunRecord]:
        """A sweep's point runs, in the order they started."""
        return self.search(experiment_id, f"tags.{PARENT} = '{parent_run_id}'")

    def child_of_slurm_job(self, experiment_id: str, parent_run_id: str, job_id: str) -> str | None:
        """The run of the point that Slurm job ran, if it got as far as creating one."""
        where = f"tags.{PARENT} = '{parent_run_id}' and tags.{SLURM_JOB} = '{job_id}'"
        found = self.search(experiment_id, where)
        return found[0].run_id if found else None

    def attempts(self, experiment_id: str, parent_run_id: str, point_key: str) -> list[RunRecord]:
        """A sweep's runs of one point (its tries and reruns), oldest first."""
        where = f"tags.{PARENT} = '{parent_run_id}' and tags.`{POINT_KEY}` = '{point_key}'"
        return self.search(experiment_id, where)

    def unfinished_sweeps(self, experiment_id: str, sweep_key: str | None = None) -> list[RunRecord]:
        """The sweeps (of this key, if given) that did not finish (their driver stopped or died),
        newest first; not one that a driver on this host still runs (the same command started twice
        at once)."""
        where = f"tags.`{ROLE}` = '{ROLE_SWEEP}' and attributes.status != 'FINISHED'"
        if sweep_key is not None:
            where += f" and tags.`{SWEEP_KEY}` = '{sweep_key}'"
        found = self.search(experiment_id, where, newest_first=True, limit=100)
        return [run for run in found if not _driven_here(run)]

    def latest_sweep(self, experiment_id: str) -> RunRecord | None:
        found = self.search(experiment_id, f"tags.`{ROLE}` = '{ROLE_SWEEP}'", newest_first=True, limit=1)
        return found[0] if found else None

    def measured_before(self, experiment_id: str, trial_key: str) -> RunRecord | None:
        """The newest finished run of this search trial (its composed config) on this host, from any
        search."""
        where = f"tags.`{TRIAL_KEY}` = '{trial_key}' and tags.`{HOST}` = '{socket.gethostname()}'"
        where += " and attributes.status = 'FINISHED'"
        found = self.search(experiment_id, where, newest_first=True, limit=1)
        return found[0] if found else None

    def close_orphans(self, experiment_id: str) -> list[str]:
        """Mark KILLED the runs this host's processes left RUNNING when they died: nothing else would
        ever close them, and the UI and reports would show them running forever. Returns their ids."""
        host = socket.gethostname()
        where = f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'"
        closed = []
        for run in self.search(experiment_id, where, limit=1000):
            pid = int(run.tags[PID])
            if _alive(pid, float(run.tags[PID_STARTED])):
                continue
            note = (
                f"process {pid} on {host} ended without closing this run (killed: SIGKILL, the OOM "
                "killer or a lost machine); closed as KILLED by a later pipeline start"
            )
            self.end(run.run_id, RunState.KILLED, note)
            closed.append(run.run_id)
        return closed


def prepare(cfg: Config) -> str:
    """Create the store and the experiment once, before any run, and return the experiment id.
    Concurrent first opens of one sqlite store break its schema migration (and may leave it
    half-built), so every start takes a file lock beside the store for this. Runs that a dead
    process of this host left RUNNING are closed first."""
    uri = tracking_uri(cfg)
    path = sqlite_path(uri)
    try:
        if path is None:
            _answers(uri)
            return _prepare(cfg, uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            _wait_while_made(path)
            return _prepare(cfg, uri)
    except (OSError, MlflowException, SQLAlchemyError) as e:
        raise _unusable(cfg, uri, e) from None


def prepared(cfg: Config) -> tuple[Store, str]:
    """The store, opened once prepare has made it under its lock, and the experiment's id. No Store
    comes first: MlflowClient opens (and migrates) a sqlite store as it is made."""
    experiment_id = prepare(cfg)
    return Store.of(cfg), experiment_id


def _wait_while_made(path: Path, wait_s: float = 60, held_s: float = 6) -> None:
    """Another process (`mlflow ui`, a script: they take no lock of ours) may be making this store,
    its schema migration half done: touching it now would break both ("table ... already exists").
    Wait, reading it read-only, until its schema is MLflow's newest, or for wait_s at most (then
    MLflow's own check says what is wrong with it). A migration locks the store in short steps, which
    on a loaded machine last seconds: a store locked for held_s on end, never seen half made, is held
    by another process, not being made, and MLflow's own attempt then says so."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    newest = _get_latest_schema_revision()
    deadline = time.monotonic() + wait_s
    half_made, locked_since = False, None
    while path.exists() and time.monotonic() < deadline:
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
                if db.execute("SELECT version_num FROM alembic_version").fetchone() == (newest,):
                    return
            half_made, locked_since = True, None
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):  # no schema table yet
                half_made, locked_since = True, None
            elif locked_since is None:
                locked_since = time.monotonic()
            elif not half_made and time.monotonic() - locked_since > held_s:
                return
        except sqlite3.DatabaseError:  # not a database at all: MLflow's attempt says so
            return
        time.sleep(0.5)


@functools.cache
def _masking_output() -> None:
    """Where the URI holds a password, what MLflow and Hydra print of it is masked too: MLflow's
    "View run ... at: <uri>/#/..." line as it ends each run is not printed (here and in the
    processes started from here), and every log record of this process is masked (Hydra logs each
    sweep point's overrides, MLflow's errors the URL they asked)."""
    os.environ[MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name] = "true"
    make = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        try:
            made.msg, made.args = masked(made.getMessage()), ()
        except (TypeError, ValueError):  # a bad format: the handler says so, as it would have
            pass
        return made

    logging.setLogRecordFactory(record)


def _text(path: Path) -> str | None:
    """The file's text; None for a binary file (a plot)."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return None


def _answers(uri: str) -> None:
    """A tracking server answers in seconds (MLflow's client would retry for minutes). urllib sends
    no URL's user:password: they go as basic auth, as MLflow's client (requests) sends them."""
    url = urllib.parse.urlsplit(uri)
    health = url._replace(netloc=url.netloc.rpartition("@")[2], path=f"{url.path.rstrip('/')}/health")
    request = urllib.request.Request(health.geturl())
    if url.username is not None:
        user = urllib.parse.unquote(url.username)
        password = urllib.parse.unquote(url.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5):
        pass


def _unusable(cfg: Config, uri: str, e: Exception) -> ConfigError:
    """Why the store cannot be used, as the one line that names the key to change."""
    reason = masked((str(getattr(e, "reason", "")) or str(e)).strip().splitlines()[0])
    path = sqlite_path(uri)
    if path is None:
        return ConfigError(
            "tracking.uri",
            f"no MLflow server answers at {masked(uri)} ({reason})",
            "start it (mlflow server --host 127.0.0.1 --port 5000), or leave tracking.uri unset (sqlite)",
        )
    if "locked" in reason:
        return ConfigError(
            "outputs_dir",
            f"the MLflow store {path} is locked by another process ({reason})",
            f"wait for that process to let go (fuser {path} names it), or use another outputs_dir",
        )
    if "not a database" in reason:
        return ConfigError(
            "tracking.uri",
            f"{path} is not an MLflow store ({reason})",
            "move that file away, or set outputs_dir to another directory",
        )
    return ConfigError(
        "outputs_dir",
        f"the MLflow store cannot be made in {Path(cfg.outputs_dir).absolute()} ({reason})",
        "set outputs_dir to a directory this user can write, or tracking.enabled=false",
    )


def _prepare(cfg: Config, uri: str) -> str:
    store = Store(uri)
    experiment_id = store.experiment_id(cfg.tracking.experiment)
    if experiment_id is None:
        local = sqlite_path(uri) is not None
        artifacts = (Path(cfg.outputs_dir).absolute() / "mlartifacts").as_uri() if local else None
        return store.create_experiment(cfg.tracking.experiment, artifacts)
    for run_id in store.close_orphans(experiment_id):
        print(
            f"MLflow run {run_id} was left RUNNING by a process that was killed: marked KILLED",
            file=sys.stderr,
        )
    return experiment_id


def owner_tags() -> dict[str, str]:
    """The process that owns a run outside Slurm (Slurm's runs are settled from sacct instead):
    if it dies without closing the run (SIGKILL, the OOM killer), close_orphans can tell."""
    me = psutil.Process()
    return {
        HOST: socket.gethostname(),
        PID: str(me.pid),
        PID_STARTED: repr(me.create_time()),
    }


def _driven_here(run: RunRecord) -> bool:
    """The run is RUNNING and the process that owns it is alive on this host."""
    tags = run.tags
    return (
        run.state == RunState.RUNNING
        and tags.get(HOST) == socket.gethostname()
        and _alive(int(tags[PID]), float(tags[PID_STARTED]))
    )


def _alive(pid: int, started: float) -> bool:
    """That very process still runs (not a later one that was given the same pid)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False
