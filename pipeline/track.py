"""MLflow: the store, one run per point, flat params, metrics from rank 0, artifacts, status.

The job process owns the run: it creates it before any rank starts (so a failed start is still
recorded), rank 0 only appends metrics to it by id, and the job closes it with the summary.
"""
import json
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

import mlflow
import psutil
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf


def tracking_uri(cfg: DictConfig) -> str:
    return store_uri(cfg.outputs_dir, cfg.tracking.uri)


def store_uri(outputs_dir: str, uri: Optional[str] = None) -> str:
    """The one URI rule, shared with the UI and report commands that have no composed config."""
    return uri or f"sqlite:///{Path(outputs_dir).absolute() / 'mlflow.db'}"


def mark_training(client: MlflowClient, experiment_id: str) -> None:
    """MLflow 3's UI opens an experiment on its GenAI (traces) page unless it is tagged as model training."""
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")


@contextmanager
def system_metrics(cfg: DictConfig, run_id: Optional[str]) -> Iterator[None]:
    """Host CPU/memory/disk (and GPU where nvidia-ml-py is installed) sampled into the run while it trains."""
    if not (run_id and cfg.tracking.system_metrics):
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=2, tracking_uri=tracking_uri(cfg))
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def prepare(cfg: DictConfig) -> str:
    """Create the store and the experiment once, before any run (concurrent first opens of one
    sqlite store break its migration), and return the experiment id. Runs that a dead process
    of this host left RUNNING are closed first."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        for run_id in close_orphans(client, exp.experiment_id):
            print(f"MLflow run {run_id} was left RUNNING by a process that was killed: marked KILLED", file=sys.stderr)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(cfg.outputs_dir).absolute() / "mlartifacts").as_uri()
    experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=location)
    mark_training(client, experiment_id)
    return experiment_id


def owner_tags() -> Dict[str, str]:
    """The process that owns a run outside Slurm (Slurm's runs are settled from sacct instead):
    if it dies without closing the run (SIGKILL, the OOM killer), close_orphans can tell."""
    me = psutil.Process()
    return {"zerosweep.host": socket.gethostname(), "zerosweep.pid": str(me.pid),
            "zerosweep.pid_started": repr(me.create_time())}


def _alive(pid: int, started: float) -> bool:
    """That very process still runs (not a later one that was given the same pid)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


def close_orphans(client: MlflowClient, experiment_id: str) -> List[str]:
    """Mark KILLED the runs this host's processes left RUNNING when they died: nothing else would
    ever close them, and the UI and reports would show them running forever. Returns their ids."""
    host = socket.gethostname()
    closed = []
    for run in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`zerosweep.host` = '{host}'",
                                  max_results=1000):
        tags = run.data.tags
        pid = int(tags["zerosweep.pid"])
        if _alive(pid, float(tags["zerosweep.pid_started"])):
            continue
        client.log_text(run.info.run_id, f"process {pid} on {host} ended without closing this run "
                        "(killed: SIGKILL, the OOM killer or a lost machine); closed as KILLED by a later "
                        "pipeline start\n", "error.txt")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def flat_params(cfg: DictConfig, choices: Mapping[str, Optional[str]]) -> Dict[str, str]:
    """Every leaf of the composed config as 'group.key', plus each group's choice and lr."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    flat: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = json.dumps(node) if isinstance(node, (list, dict)) else str(node)

    walk("", tree)
    flat.update({group: str(choice) for group, choice in choices.items() if choice is not None})
    flat["lr"] = str(cfg.optimizer.lr)
    return flat


def start_run(cfg: DictConfig, experiment_id: str, name: str, params: Dict[str, str], tags: Dict[str, str]) -> str:
    client = MlflowClient(tracking_uri(cfg))
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


RUN_ID_FILE = "mlflow_run_id"


def save_run_id(out: Path, run_id: str) -> None:
    """Beside the job's checkpoints, so that a requeued job finds the run it started."""
    (out / RUN_ID_FILE).write_text(run_id + "\n")


def saved_run_id(out: Path) -> Optional[str]:
    path = out / RUN_ID_FILE
    return path.read_text().strip() if path.exists() else None


def resume(cfg: DictConfig, run_id: str) -> int:
    """Reopen a run for its requeued job; returns the last step it logged, so that the steps
    trained again after the checkpoint are not logged twice."""
    client = MlflowClient(tracking_uri(cfg))
    client.update_run(run_id, status="RUNNING")
    history = client.get_metric_history(run_id, "loss")
    return max((m.step for m in history), default=0)


class MetricLogger:
    """Appends metrics to a run from training rank 0, asynchronously so steps never wait on I/O;
    flush() before the process ends. Steps up to after_step were logged by an earlier attempt."""

    def __init__(self, uri: str, run_id: str, after_step: int = 0) -> None:
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.after_step = after_step

    def __call__(self, values: Dict[str, float], step: int) -> None:
        if step <= self.after_step:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)

    def flush(self) -> None:
        mlflow.flush_async_logging()


def finish(cfg: DictConfig, run_id: str, summary: Dict[str, float], artifacts: Iterable[Path]) -> None:
    client = MlflowClient(tracking_uri(cfg))
    now = int(time.time() * 1000)
    step = int(summary.get("steps", 0))
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in summary.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def fail(cfg: DictConfig, run_id: str, error: str, status: str = "FAILED") -> None:
    """Mark the run FAILED (or KILLED) and keep the error's last lines beside it."""
    client = MlflowClient(tracking_uri(cfg))
    client.log_text(run_id, "\n".join(error.splitlines()[-50:]) + "\n", "error.txt")
    client.set_terminated(run_id, status)


def set_tags(cfg: DictConfig, run_id: str, tags: Dict[str, str]) -> None:
    MlflowClient(tracking_uri(cfg)).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
