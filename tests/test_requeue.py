"""A Slurm job's requeue on a time-out signal: Slurm's requeue ends the job's processes with SIGTERM,
and on a loaded node that may reach the `scontrol requeue` submitit started before it exits. A fresh
clone's run of test_slurm's interrupted-job test marked the point FAILED so, while Slurm ran it again.
Here the scontrol on the PATH ends as that one did (the real race is not reproducible on demand)."""

import os
import subprocess
from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmJobEnvironment

from pipeline.launch import slurm


@pytest.fixture
def scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    return tmp_path / "scontrol"


def _ends_with(scontrol: Path, line: str) -> None:
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {scontrol}.args\n{line}\n')
    scontrol.chmod(0o755)


def test_a_scontrol_ended_by_slurms_sigterm_is_a_requeue_done(scontrol: Path):
    _ends_with(scontrol, "kill -TERM $$")
    slurm.requeue(SlurmJobEnvironment(), countdown=3)
    assert Path(f"{scontrol}.args").read_text().split() == ["requeue", "42"]


def test_a_scontrol_that_fails_is_still_an_error(scontrol: Path):
    _ends_with(scontrol, "exit 1")
    with pytest.raises(subprocess.CalledProcessError):
        slurm.requeue(SlurmJobEnvironment(), countdown=3)
