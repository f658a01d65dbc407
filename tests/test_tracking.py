"""No run stays RUNNING: one whose process dies without closing it (SIGKILL, the OOM killer) is
closed as KILLED by the next start on this host; SIGTERM and Ctrl-C close what they stop, at once,
saying why, and an interrupted sweep still closes its parent and writes its table and report."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from pipeline.track import store_uri

from helpers import (
    ROOT,
    MlflowServer,
    artifact_text,
    cli_env,
    mlflow_client,
    ok,
    pipeline_cmd,
    run_pipeline,
    runs,
    start_cli,
    wait_for,
)


def start_training(outputs: Path, *args: str) -> subprocess.Popen:
    """A long training in the background, once its first (or only) run has logged a loss."""
    cmd = pipeline_cmd(outputs, *args, "trainer.max_steps=100000")
    proc = start_cli(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def logged_loss():
        # The run id file is written once the store is set up: opening the sqlite store while
        # the pipeline still creates its tables would race MLflow's schema migration.
        saved = list(outputs.glob("*/*/mlflow_run_id")) + list(outputs.glob("sweeps/*/*/mlflow_run_id"))
        return saved and mlflow_client(outputs).get_metric_history(saved[0].read_text().strip(), "loss")

    try:
        wait_for("the first run to log a loss", logged_loss, timeout=300)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


@pytest.mark.slow
def test_killed_run_is_closed_by_the_next_start(outputs):
    proc = start_training(outputs)
    os.killpg(proc.pid, signal.SIGKILL)  # as the OOM killer would: no handler runs
    proc.communicate()
    (killed,) = runs(outputs)
    assert killed.info.status == "RUNNING"  # nothing left alive to close it
    losses = mlflow_client(outputs).get_metric_history(killed.info.run_id, "loss")

    result = ok(run_pipeline(outputs, "trainer.max_steps=2"))
    assert (
        f"MLflow run {killed.info.run_id} was left RUNNING by a process that was killed: marked KILLED"
        in result.stderr
    )

    first, second = runs(outputs)
    assert first.info.run_id == killed.info.run_id
    assert (first.info.status, second.info.status) == ("KILLED", "FINISHED")
    assert first.info.end_time is not None
    client = mlflow_client(outputs)
    assert len(client.get_metric_history(first.info.run_id, "loss")) >= len(losses) > 0  # kept
    note = client.download_artifacts(first.info.run_id, "error.txt")
    assert f"process {proc.pid} " in open(note).read()


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_at_once_with_every_step_it_printed(outputs, tmp_path):
    """Two ranks: the launcher passes the SIGTERM on, and rank 0 flushes its buffered metrics."""
    proc = start_training(outputs, "trainer.nproc_per_node=2")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped: terminated by SIGTERM; the runs it ended are KILLED" in err
    (run,) = runs(outputs)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert (
        artifact_text(outputs, run.info.run_id, "error.txt", tmp_path)
        .strip()
        .endswith("terminated by SIGTERM")
    )
    logged = mlflow_client(outputs).get_metric_history(run.info.run_id, "loss")
    assert len(logged) == out.count("{'loss': ") > 0  # every step it printed, none lost


@pytest.mark.slow
def test_ctrl_c_closes_an_interrupted_sweep(outputs, tmp_path):
    """Ctrl-C (SIGINT, also when the process inherited it ignored) during a sweep's first point."""
    proc = start_training(outputs, "-m", "zero=stage1,stage2")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    parent, (point,) = _sweep_runs(outputs)
    assert parent.info.status == "KILLED" and point.info.status == "KILLED"
    assert "interrupted (Ctrl-C)" in artifact_text(outputs, point.info.run_id, "error.txt", tmp_path)
    table = artifact_text(outputs, parent.info.run_id, "sweep_table.txt", tmp_path)
    assert "zero=stage1  KILLED" in table and "zero=stage1  KILLED" in out
    (sweep_dir,) = (outputs / "sweeps").iterdir()
    assert (sweep_dir / "report.html").exists()


def _sweep_runs(outputs: Path) -> tuple:
    all_runs = runs(outputs)
    (parent,) = [r for r in all_runs if r.data.tags.get("zerosweep.role") == "sweep"]
    return parent, [r for r in all_runs if r is not parent]


@pytest.mark.slow
def test_simultaneous_starts_each_get_their_own_run_and_dir(outputs):
    """Three starts at once on a fresh store (its creation races without the lock), then two on the
    existing one: every start finishes, each in its own run dir with its own run."""
    for starts in (3, 2):
        cmd = pipeline_cmd(outputs, "trainer.max_steps=2", "trainer.save_model=false")
        procs = [
            start_cli(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(starts)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
    all_runs = runs(outputs)
    assert len(all_runs) == 5 and {r.info.status for r in all_runs} == {"FINISHED"}
    dirs = [Path(r.data.tags["zerosweep.output_dir"]) for r in all_runs]
    assert len(set(dirs)) == 5
    for run, run_dir in zip(all_runs, dirs, strict=True):
        assert (run_dir / "mlflow_run_id").read_text().strip() == run.info.run_id


def test_the_system_metrics_sampler_is_a_process_that_ends_with_its_owner(tmp_path):
    """Sampling system metrics runs beside the training process, not as a thread of it (it took
    ~1% of a rank's main thread: benchmarks/tracking_cost.py --sampler); when the process that
    started it dies, even by SIGKILL, the sampler ends too, its samples in the run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("sampler")).info.run_id
    start = "import sys, time; from pipeline.track.sampler import Sampler; "
    start += "Sampler(sys.argv[1], sys.argv[2], 1).start(); time.sleep(600)"
    owner = subprocess.Popen([sys.executable, "-c", start, run_id, uri], cwd=ROOT, env=cli_env())
    (sampler,) = wait_for("the sampler's process", lambda: psutil.Process(owner.pid).children(), 30)

    def samples() -> list:
        return client.get_metric_history(run_id, "system/cpu_utilization_percentage")

    wait_for("a sample in the run", samples, timeout=60)
    owner.kill()
    owner.wait()
    wait_for("the sampler to end", lambda: _ended(sampler), timeout=30)
    assert samples()


def _ended(process: psutil.Process) -> bool:
    """Gone, or a zombie left for whichever process reaps orphans here."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_start_waits_while_another_process_makes_the_same_store(tmp_path):
    """`mlflow ui` (or any script) opened on a fresh outputs dir makes the sqlite store at the moment
    a sweep starts: the start waits for it to finish, where it once stopped on "table ... already
    exists" (the other process takes no lock of ours)."""
    from pipeline import track
    from pipeline.check.compose import compose_point

    cfg = compose_point([f"outputs_dir={tmp_path}"])
    make = "import sys; from mlflow import MlflowClient; print('making', flush=True); "
    make += "MlflowClient(sys.argv[1]).search_experiments()"
    other = subprocess.Popen(
        [sys.executable, "-c", make, track.tracking_uri(cfg)],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert other.stdout.readline() == "making\n"
    wait_for("the other process to begin the store", track.sqlite_path(track.tracking_uri(cfg)).exists, 60)
    experiment_id = track.prepare(cfg)
    assert other.wait(timeout=120) == 0
    assert MlflowClient(track.tracking_uri(cfg)).get_experiment(experiment_id).name == cfg.tracking.experiment


def test_a_store_on_a_network_filesystem_is_told_apart_from_a_local_disk():
    """What the driver reads (/proc/mounts) before it sends a sweep with a sqlite store to Slurm:
    the longest mount point above the store decides."""
    from pipeline.track import network_filesystem

    mounts = "\n".join(
        [
            "/dev/nvme0n1p2 / ext4 rw,relatime 0 0",
            "fs01:/export/home /home nfs4 rw,vers=4.2 0 0",
            "/dev/nvme1n1 /home/alice/scratch xfs rw 0 0",
            "lfs@o2ib:/lustre /lustre lustre rw 0 0",
            "//nas/team\\040share /mnt/team\\040share cifs rw 0 0",
        ]
    )
    assert network_filesystem(Path("/home/alice/outputs"), mounts) == "nfs4"
    assert network_filesystem(Path("/home/alice/scratch/outputs"), mounts) is None
    assert network_filesystem(Path("/lustre/proj/outputs"), mounts) == "lustre"
    assert network_filesystem(Path("/mnt/team share/out"), mounts) == "cifs"
    assert network_filesystem(Path("/tmp/outputs"), mounts) is None
    assert network_filesystem(Path("/tmp"), Path("/proc/mounts").read_text()) is None  # this machine


def test_training_rides_out_an_mlflow_server_outage(tmp_path):
    """The team's server goes away mid-run and comes back: training goes on meanwhile, and what it
    logged in between reaches the server once it is back (MLflow's client retries for minutes:
    README, Tracking). Every step is there, once, and the run ends FINISHED."""
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    args = (f"tracking.uri={server.uri}", "trainer.max_steps=300", "tracking.buffer_s=1")
    proc = start_cli(pipeline_cmd(tmp_path / "outputs", *args), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        run_id = wait_for("a logged loss", lambda: _logging_run(server.uri), timeout=300)
        away = time.time()
        server.stop()
        time.sleep(8)
        assert proc.poll() is None, "it ended while the server was away"
        back = time.time()
        server.start()
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        run = mlflow_client(server.uri).get_run(run_id)
        losses = mlflow_client(server.uri).get_metric_history(run_id, "loss")
    finally:
        proc.kill()
        server.stop()
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in losses) == list(range(1, 301))
    assert any(away * 1000 < m.timestamp < back * 1000 for m in losses)  # trained while it was away


def _logging_run(uri: str) -> str | None:
    """The id of the run once it has logged a loss."""
    found = runs(uri)
    return found[0].info.run_id if found and "loss" in found[0].data.metrics else None


def test_a_store_busy_for_seconds_loses_no_metric(tmp_path):
    """Another process holds the sqlite store for 25 s mid-run (a write waits 20 s for it):
    MLflow's logger drops the batch it could not write; the run writes it again, and every step is
    there, once, with no step counted lost."""
    outputs = tmp_path / "outputs"
    args = ("trainer.max_steps=150", "tracking.buffer_s=1")
    proc = start_cli(
        pipeline_cmd(outputs, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    hold = "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], timeout=60); "
    hold += "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(25)"
    try:
        # The run id file is written once the store is made: reading it before would race its making.
        wait_for("the run", lambda: list(outputs.glob("runs/*/mlflow_run_id")), timeout=300)
        run_id = wait_for("a logged loss", lambda: _logging_run(store_uri(outputs)), timeout=300)
        locker = subprocess.run(
            [sys.executable, "-c", hold, str(outputs / "mlflow.db")], capture_output=True, text=True
        )
        assert locker.stdout == "locked\n" and proc.poll() is None, "it ended before the store was held"
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    run = mlflow_client(outputs).get_run(run_id)
    assert run.info.status == "FINISHED" and "zerosweep.lost_metric_steps" not in run.data.tags
    losses = mlflow_client(outputs).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 151))
    assert "lost_metric_steps" not in run.data.metrics and "the MLflow store did not take" in out
