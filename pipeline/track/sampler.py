"""MLflow's system-metrics sampler in a process of its own, beside the training process.

As a thread of the training process (MLflow's way) it took ~1% of the main thread's time, in the
GIL, away from a one-GPU rank's Python (benchmarks/tracking_cost.py --sampler): the whole of the
1% that tracking may cost. Its own process samples the same machine-wide figures. It lives as
long as the pipe from the process that started it: closed at the end of the run, or by the
kernel when that process dies, so it can never outlive the run.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

# Where the pipeline package lives: the sampler imports it wherever the run was started from.
ROOT = str(Path(__file__).resolve().parents[2])
# Started by name, not with -m: the package's __init__ imports this module first.
ENTRY = f"import sys; from {__name__} import main; main(*sys.argv[1:])"
URI_ENV = "ZEROSWEEP_SAMPLER_URI"


class Sampler:
    """Samples CPU, memory, disk, network and GPU into a run every interval_s, until finish(): the
    start() / finish() of the MLflow monitor it runs. With a node name (a job across nodes), its
    metrics are system/<node>/..., one set per node. A run reopened after a requeue gets its
    samples after the earlier attempt's (a new run has none: they start at 0)."""

    def __init__(self, run_id: str, uri: str, interval_s: int, node: str | None = None) -> None:
        self._args = [run_id, str(interval_s), node or ""]
        self._uri = uri
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-c", ENTRY, *self._args]
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        # The store's URI in the environment, not the command line, which any user of the machine
        # can read (ps): it may hold a password.
        env = {**os.environ, "PYTHONPATH": path, URI_ENV: self._uri}
        # A session of its own: a terminal's Ctrl-C goes to the training process, which stops it.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, start_new_session=True)

    def finish(self) -> None:
        """Closes the pipe; the sampler logs its last samples and exits."""
        if self._proc is None:
            return
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc = None


def main(run_id: str, interval_s: str, node: str) -> None:
    uri = os.environ[URI_ENV]
    # Slurm signals every process of a job step: the training process decides when the run
    # ends (a preempted job checkpoints first), and closes the pipe then.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=int(interval_s), resume_logging=True, node_id=node or None, tracking_uri=uri
    )
    _only_visible_gpus(monitor)
    monitor.start()
    sys.stdin.buffer.read()  # until the pipe closes
    monitor.finish()
    # MLflow's monitor drops what it sampled since its last publish: a run shorter than one interval
    # would have no system metrics at all. One last sample, at the run's end.
    monitor.collect_metrics()
    monitor.publish_metrics(monitor.aggregate_metrics())
    monitor.mlflow_logger.flush()


def _only_visible_gpus(monitor: SystemMetricsMonitor) -> None:
    """NVML sees every GPU of the node; the run gets only its job's (CUDA_VISIBLE_DEVICES, as Slurm
    or the user set it), numbered as the job sees them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if not all(v.strip().isdigit() for v in visible):  # unset, or UUIDs: leave MLflow's view
        return
    for gpus in (m for m in monitor.monitors if isinstance(m, GPUMonitor)):
        gpus.gpu_handles = [gpus.gpu_handles[int(v)] for v in visible if int(v) < len(gpus.gpu_handles)]
