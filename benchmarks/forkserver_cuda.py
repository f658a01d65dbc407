"""Can a rank forked from a forkserver that imported the pipeline's rank side (torch, transformers,
DeepSpeed, MLflow) use CUDA, as a spawned one can? And how long does each take from start to its
first CUDA matmul? (Issue 35: GPU ranks that skip the imports.)
usage: python benchmarks/forkserver_cuda.py forkserver|spawn"""

import multiprocessing as mp
import os
import sys
import time


def child(q, t0):
    import torch

    x = torch.randn(4096, 4096, device="cuda")
    y = x @ x
    torch.cuda.synchronize()
    q.put(
        (os.getpid(), round(time.time() - t0, 2), float(y.float().abs().mean()), torch.cuda.get_device_name())
    )


if __name__ == "__main__":
    method = sys.argv[1]
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["pipeline.launch.local"])
    import torch

    print(
        "parent: cuda available",
        torch.cuda.is_available(),
        "initialized",
        torch.cuda.is_initialized(),
        flush=True,
    )
    for i in range(3):
        t0 = time.time()
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q, t0))
        p.start()
        try:
            print(method, i, q.get(timeout=240), flush=True)
        except Exception as e:
            print(method, i, "failed", repr(e), flush=True)
        p.join()
        print(method, i, "exitcode", p.exitcode, flush=True)
