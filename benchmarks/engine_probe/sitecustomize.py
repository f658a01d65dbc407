"""Where a DeepSpeed step's time goes, in any process, without touching its code.

Put this folder first on PYTHONPATH and set ZS_PROBE=DIR: every Python process that then trains
with a DeepSpeedEngine (the pipeline and the hand-written reference alike) times the engine's
forward, backward and step (CUDA-synced), the CPU seconds and the garbage-collector pauses inside
each, and writes DIR/probe-PID.json at exit, averaged over the calls after the first ten.
benchmarks/RESULTS.md (fifth session) shows what it found.
"""

import os

if os.environ.get("ZS_PROBE"):
    import atexit
    import gc
    import json
    import resource
    import sys
    import threading
    import time

    CALLS = ("forward", "backward", "step")
    SKIP = 10  # warm-up calls left out
    _calls = {name: [] for name in CALLS}
    _gc = {"s": 0.0, "n": 0, "t0": None}

    def _on_gc(phase, info):
        if phase == "start":
            _gc["t0"] = time.perf_counter()
        elif _gc["t0"] is not None:
            _gc["s"] += time.perf_counter() - _gc["t0"]
            _gc["n"] += 1
            _gc["t0"] = None

    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def _timed(cls, name):
        call = getattr(cls, name)

        def timed(self, *args, **kwargs):
            import torch

            sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
            sync()
            t0, c0, g0 = time.perf_counter(), _cpu_s(), _gc["s"]
            out = call(self, *args, **kwargs)
            sync()
            _calls[name].append((time.perf_counter() - t0, _cpu_s() - c0, _gc["s"] - g0))
            return out

        setattr(cls, name, timed)

    def _patch_when_imported():
        """DeepSpeed is imported late (by the Trainer): patch its engine class once it is there."""
        while True:
            engine = sys.modules.get("deepspeed.runtime.engine")
            if engine is not None and hasattr(engine, "DeepSpeedEngine"):
                for name in CALLS:
                    _timed(engine.DeepSpeedEngine, name)
                return
            time.sleep(0.2)

    def _dump():
        timed = {name: xs[SKIP:] for name, xs in _calls.items() if xs[SKIP:]}
        if not timed:  # a launcher or data-loader process: it trained nothing
            return
        torch = sys.modules["torch"]
        out = {
            "argv": sys.argv,
            "gc_total_s": _gc["s"],
            "gc_passes": _gc["n"],
            "torch_threads": torch.get_num_threads(),
            "affinity": len(os.sched_getaffinity(0)),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        for name, xs in timed.items():
            out[name] = {
                "calls": len(xs),
                "wall_s": sum(x[0] for x in xs) / len(xs),
                "cpu_s": sum(x[1] for x in xs) / len(xs),
                "gc_s": sum(x[2] for x in xs) / len(xs),
            }
        with open(os.path.join(os.environ["ZS_PROBE"], f"probe-{os.getpid()}.json"), "w") as f:
            json.dump(out, f, indent=1)

    gc.callbacks.append(_on_gc)
    threading.Thread(target=_patch_when_imported, daemon=True).start()
    atexit.register(_dump)
