"""How fast the disk under offload.nvme_path moves offloaded states (issue 32 item 8): DeepSpeed's
DeepNVMe aio handle, the engine offload=nvme uses, writing and reading io-size bytes between pinned
host memory and a file (as DeepSpeed's own `ds_io` does, in one process for the whole grid), over
aio block sizes and queue depths around the pipeline's offload.aio defaults, plus what the
pipeline's own nvme_path check says about that disk.

usage: python benchmarks/aio_bench.py --folder DIR --out OUT [--io-mib 1024] [--loops 3]
Writes OUT/table.md (with the command that made it) and OUT/rows.jsonl after every setting.
"""

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from deepspeed.ops.op_builder import AsyncIOBuilder

from pipeline.check import preflight
from pipeline.config import AioConf

BLOCK_SIZES = [2**17, 2**18, 2**20, 2**23]
QUEUE_DEPTHS = [8, 32, 128]


def speeds(aio, folder: Path, buffer: torch.Tensor, block: int, depth: int, loops: int) -> tuple[float, ...]:
    """(write, read) GB/s, the median of loops transfers after one warm-up, with the pipeline's
    other offload.aio settings."""
    conf = AioConf()
    handle = aio.aio_handle(block, depth, conf.single_submit, conf.overlap_events, conf.thread_count)
    path = str(folder / f"_aio_{block}_{depth}.bin")
    figures = []
    for op in (handle.sync_pwrite, handle.sync_pread):
        times = []
        for _ in range(loops + 1):
            t0 = time.perf_counter()
            op(buffer, path)
            times.append(time.perf_counter() - t0)
        figures.append(buffer.numel() / statistics.median(times[1:]) / 1e9)
    Path(path).unlink()
    return figures[0], figures[1]


def size_name(n: int) -> str:
    return f"{n // 2**20}M" if n >= 2**20 else f"{n // 2**10}K"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, required=True, help="a directory on the disk to measure")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--io-mib", type=int, default=1024)
    ap.add_argument("--loops", type=int, default=3)
    a = ap.parse_args()
    a.folder.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    drive = preflight.drive_of(a.folder.resolve())
    warning = preflight.slow_drive_warning(a.folder.resolve())
    aio = AsyncIOBuilder().load()
    handle = aio.aio_handle(AioConf.block_size, AioConf.queue_depth, False, True, 1)
    buffer = handle.new_cpu_locked_tensor(a.io_mib * 2**20, torch.empty(0, dtype=torch.uint8))
    buffer.random_(0, 128)
    head = [
        f"`{shlex.join(['python', *sys.argv])}`",
        "",
        f"Disk under {a.folder}: {drive}. The pipeline's check says: {warning or 'NVMe (no warning)'}",
        f"DeepNVMe aio handle, {a.io_mib} MiB per transfer from pinned memory, median of {a.loops} after "
        f"1 warm-up; the pipeline's default offload.aio is block {size_name(AioConf.block_size)}, "
        f"queue depth {AioConf.queue_depth} (marked *).",
        "",
        "| block | queue depth | write GB/s | read GB/s |",
        "|---|---|---|---|",
    ]
    lines = []
    for block in BLOCK_SIZES:
        for depth in QUEUE_DEPTHS:
            write, read = speeds(aio, a.folder, buffer, block, depth, a.loops)
            row = {"block": block, "queue_depth": depth, "write_gbps": write, "read_gbps": read}
            with (a.out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            mark = " *" if (block, depth) == (AioConf.block_size, AioConf.queue_depth) else ""
            lines.append(f"| {size_name(block)}{mark} | {depth} | {write:.2f} | {read:.2f} |")
            (a.out / "table.md").write_text("\n".join(head + lines) + "\n")
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
