"""What each start of the pipeline pays before it trains: a mistake of this machine is refused before
torch's big neighbours load, and DeepSpeed's CPU ops ask the CPU once per host."""

import subprocess
import sys
from pathlib import Path

import cpuinfo
import pytest

from pipeline.rank import cpu_probe

from helpers import ROOT, cli_env


def test_a_machine_refusal_comes_before_transformers_deepspeed_and_mlflow_load(tmp_path: Path):
    """9 ranks on this 2-core machine: refused by the machine check, which runs before the plan."""
    cmd = [sys.executable, "-X", "importtime", "-m", "pipeline", "trainer.nproc_per_node=99"]
    result = subprocess.run(
        [*cmd, f"outputs_dir={tmp_path}"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: trainer.nproc_per_node: 99 ranks but" in result.stderr
    loaded = {
        line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert not {"transformers", "deepspeed", "mlflow"} & loaded


def test_deepspeed_asks_the_cpu_once_per_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DeepSpeed's CPU op builders get py-cpuinfo's answer (so the same compiler flags, and no rebuild
    of an op built before), probed once and then read from the user's cache."""
    from deepspeed.ops.op_builder import CPUAdamBuilder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpuinfo, "get_cpu_info", cpuinfo.get_cpu_info)  # put back after the test
    live = CPUAdamBuilder().cxx_args()
    probes = []
    real = cpuinfo.get_cpu_info
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: probes.append(1) or real())
    cpu_probe.remember()
    assert CPUAdamBuilder().cxx_args() == CPUAdamBuilder().cxx_args() == live
    assert len(probes) == 1  # DeepSpeed asks twice per op (arch, SIMD width)
    (kept,) = (tmp_path / "zerosweep").glob("cpuinfo-*.json")
    assert kept.read_text().startswith("{")
    # Another process of this host: the kept answer, no probe.
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: probes.append(1) or real())
    cpu_probe.remember()
    assert CPUAdamBuilder().cxx_args() == live and len(probes) == 1
