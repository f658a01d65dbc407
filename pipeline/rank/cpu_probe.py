"""DeepSpeed's CPU ops (the shared-memory allreduce of its CPU ranks, CPU offload's DeepSpeedCPUAdam) ask
py-cpuinfo for the CPU's arch and SIMD flags each time a rank loads one, to pick compiler flags:
twice per rank, each a fresh probe of the CPU, 2.4 s of CPU in all per rank start (measured on the
2-core CI machine). The answer is the machine's, so each host probes once: it is kept in the user's
cache, under a key made of the CPU's model and flags as the kernel lists them (a node rebuilt with
another CPU under the same hostname probes again)."""

import functools
import hashlib
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any


def remember() -> None:
    """Answer DeepSpeed's py-cpuinfo questions from the host's kept probe (made once if missing).
    DeepSpeed imports get_cpu_info at each call, so the module's name is what it gets."""
    import cpuinfo

    probe = cpuinfo.get_cpu_info
    if probe.__module__ != __name__:  # not done yet in this process
        cpuinfo.get_cpu_info = functools.cache(lambda: _kept(probe))


def _kept(probe: Any) -> dict[str, Any]:
    path = _cache_dir() / f"cpuinfo-{socket.gethostname()}-{_cpu_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    info = probe()
    if info:  # py-cpuinfo answers {} when its probe failed: ask again next time
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(path)  # whole or not at all: ranks starting together may both write it
        except OSError:
            pass  # a read-only cache: probe again next time, as DeepSpeed would
    return info


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zerosweep"


def _cpu_key() -> str:
    """The CPU as the kernel describes it: its model and feature flags (the SIMD width is read
    from them), which change when the hardware does."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = [platform.processor()]
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    text = "\n".join(dict.fromkeys(wanted)) + platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:16]
