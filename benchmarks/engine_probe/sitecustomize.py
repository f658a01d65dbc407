"""Where a DeepSpeed step's time goes, in any process, without touching its code.

Put this folder first on PYTHONPATH and set ZS_PROBE=DIR: every Python process that then trains
with a DeepSpeedEngine (the pipeline and the hand-written reference alike) times the engine's
forward, backward and step, and around them the Trainer's batch fetch, its training_step, its
logging (_maybe_log_save_evaluate) and the step-end callbacks (all CUDA-synced), the CPU seconds
and the garbage-collector pauses inside each, and the whole step (step end to step end); it
writes DIR/probe-PID.json at exit, averaged over the calls after the first ten.
benchmarks/RESULTS.md (fifth and sixth sessions) shows what it found.
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

    # module -> class -> the methods timed
    PATCHES = {
        "deepspeed.runtime.engine": ("DeepSpeedEngine", ("forward", "backward", "step")),
        "transformers.trainer": (
            "Trainer",
            ("get_batch_samples", "training_step", "_maybe_log_save_evaluate"),
        ),
        "transformers.trainer_callback": ("CallbackHandler", ("on_step_end",)),
    }
    CALLS = tuple(name for _, names in PATCHES.values() for name in names) + ("whole_step",)
    _last_end = [None]
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
            t1 = time.perf_counter()
            _calls[name].append((t1 - t0, _cpu_s() - c0, _gc["s"] - g0))
            if name == "on_step_end":  # the step's whole wall time, from the previous step's end
                if _last_end[0] is not None:
                    _calls["whole_step"].append(
                        (t1 - _last_end[0][0], _cpu_s() - _last_end[0][1], _gc["s"] - _last_end[0][2])
                    )
                _last_end[0] = (t1, _cpu_s(), _gc["s"])
            return out

        setattr(cls, name, timed)

    def _patch_when_imported():
        """DeepSpeed is imported late (by the Trainer): patch each class once its module is there."""
        waiting = dict(PATCHES)
        while waiting:
            for module, (cls, names) in list(waiting.items()):
                found = sys.modules.get(module)
                if found is not None and hasattr(found, cls):
                    for name in names:
                        _timed(getattr(found, cls), name)
                    del waiting[module]
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
