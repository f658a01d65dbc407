"""A run whose process dies without closing it (SIGKILL, the OOM killer) does not stay RUNNING:
the next pipeline start on this host closes it as KILLED, and keeps what it had logged."""

import os
import signal
import subprocess

import pytest

from helpers import ROOT, mlflow_client, ok, pipeline_cmd, run_pipeline, runs, wait_for


@pytest.mark.slow
def test_killed_run_is_closed_by_the_next_start(outputs):
    cmd = pipeline_cmd(outputs, "trainer.max_steps=100000")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:

        def logged_loss():
            # The run id file is written once the store is set up: opening the sqlite store while
            # the pipeline still creates its tables would race MLflow's schema migration.
            saved = list(outputs.glob("runs/*/mlflow_run_id"))
            return saved and mlflow_client(outputs).get_metric_history(saved[0].read_text().strip(), "loss")

        wait_for("the first run to log a loss", logged_loss, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as the OOM killer would: no handler runs
        proc.wait()
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
