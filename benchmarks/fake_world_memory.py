"""The memory plan at cluster scale, measured on one device (issue 34): real DeepSpeed steps of the
pipeline's own plan, run as rank 0 of a world of N ranks on torch.distributed's fake backend
(FakeStore, backend "fake": collectives return at once and move no data), so that rank 0 allocates
what it would in a world of N. Each point's peak (GPU: torch.cuda max allocated and reserved, from the
Trainer's first step as the pipeline's own summary counts it, and over the whole process; host: the
rank's peak RSS, and that times the ranks of a node) is written beside the plan's figures.

Each point runs in a fresh subprocess (an OOM or a crash ends that point only) and its row is appended
to <out>/rows.jsonl as it ends, with the command that reruns it. Rerunning the same command carries on:
points with a row already are skipped (--again runs them anyway); --budget-s stops starting points once
the call's time is nearly spent (a GPU call has 10 minutes).

A point is pipeline overrides plus world=N (8 ranks a node: trainer.nproc_per_node=min(8, N) and
trainer.nnodes=N/8, so the plan's host figure is a node's); comma lists expand as with -m:
  python benchmarks/fake_world_memory.py --out DIR --suite 1b
  python benchmarks/fake_world_memory.py --out DIR \
      --point "model=llama_1b world=8,64 zero=stage1 trainer.gradient_accumulation_steps=1,4"
On CPU (no GPU), the tiny model: --suite tiny_cpu (the measured figure is then the host RSS only).

Where DeepSpeed meets the fake backend (checked on CPU with DeepSpeed 0.19.8, transformers 5.25,
accelerate 1.16): nothing in it refuses it. The process group is made here before the Trainer's
arguments exist; accelerate's PartialState and deepspeed.init_distributed then find torch.distributed
initialised and use it as it is (TorchBackend.init_process_group skips its own init), and DeepSpeed
reads the world size from it, so ZeRO partitions by N and train_batch_size = micro x accumulation x N
matches the plan's. Rank 0 with LOCAL_RANK=0 takes device 0 whatever N is. The one change from a real
run: the Trainer's data is made here (random tokens drawn per index, the plan's vocabulary and
seq_len) instead of the pipeline's random_tokens source, which would hold N x the global batch of
tokens in memory; and the pipeline's end-of-run host sum (all_gather_object over the ranks) is not
called (under the fake backend it gathers nothing).
"""

import argparse
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
RANKS_PER_NODE = 8
# What every point shares (a point's overrides come after and win): the measured rows' settings
# (tests/test_memory.py: random tokens, bf16, DeepSpeed AdamW), no tracking, no saved model, no
# watchdog, and no fit check (a point the plan says does not fit is measured too: an OOM is a row).
BASE = [
    "data=random_tokens",
    "precision=bf16",
    "optimizer=adamw",
    "tracking.enabled=false",
    "trainer.save_model=false",
    "trainer.hang_timeout_s=0",
    "trainer.timing_warmup_steps=0",
    "check_fit=false",
]
SMALL_LIVE = "zero.stage3_max_live_parameters=100000000 zero.stage3_prefetch_bucket_size=10000000"
SHORT_REUSE = "zero.stage3_max_reuse_distance=100000000 zero.stage3_max_live_parameters=100000000"
# Each model's points, sized for one 10-minute call on an H100 (a row is written as each ends; a call
# cut short carries on where it stopped when the same command runs again).
SUITES: dict[str, list[str]] = {
    # The 1B at the measured rows' seq 1024 and micro batch 8: ZeRO-1 at accumulation 1 and 4, ZeRO-2,
    # ZeRO-3 (default live/prefetch, then smaller ones, then a shorter reuse distance), fp16 and bf16.
    "1b": [
        "model=llama_1b world=8,64,512 zero=stage1 trainer.gradient_accumulation_steps=1,4",
        "model=llama_1b world=8,64,512 zero=stage2",
        "model=llama_1b world=8,64,512 zero=stage3",
        f"model=llama_1b world=64 zero=stage3 {SMALL_LIVE}",
        f"model=llama_1b world=64 zero=stage3 {SHORT_REUSE}",
        "model=llama_1b world=8 zero=stage0 precision=fp16,bf16",
        "model=llama_1b world=64 zero=stage1,stage2 precision=fp16",
    ],
    # Each step's phases for the plan's terms that miss (issues 33, 34): ZeRO-1 against ZeRO-2 at
    # accumulation 1 and 4, ZeRO-3's live parameters, and LoRA and QLoRA on ZeRO-2 and ZeRO-3 on one GPU.
    "terms": [
        "model=llama_1b world=8 zero=stage1,stage2",
        "model=llama_1b world=8 zero=stage1 trainer.gradient_accumulation_steps=4",
        "model=llama_1b world=64 zero=stage3",
        f"model=llama_1b world=64 zero=stage3 {SMALL_LIVE}",
        "model=llama_1b world=1 zero=stage2,stage3 peft=lora",
        "model=llama_1b world=1 zero=stage3",
        "model=llama_1b world=1 zero=stage2,stage3 peft=qlora",
    ],
    # The 6.7B-shaped Llama: ZeRO-3 built under zero.Init at 8, 64, 512; ZeRO-1/2 at 64, where its
    # states fit one GPU (micro batch 2: at 8 its activations alone would be ~34 GiB).
    "7b": [
        "model=llama_7b world=8,64,512 zero=stage3 model.zero3_init=true trainer.micro_batch_size=2",
        f"model=llama_7b world=64 zero=stage3 model.zero3_init=true trainer.micro_batch_size=2 {SMALL_LIVE}",
        "model=llama_7b world=64 zero=stage1 trainer.micro_batch_size=2 "
        "trainer.gradient_accumulation_steps=1,4",
        "model=llama_7b world=64 zero=stage2 trainer.micro_batch_size=2",
    ],
    # GPT-2 style (learned positions, GELU MLP, tied): seq 2048 and 4096, micro batches, checkpointing;
    # one GPU, and ZeRO-3 in a fake world of 8.
    "gpt2": [
        "model=gpt2_large world=1 zero=stage2 data.seq_len=2048,4096 trainer.micro_batch_size=1,4 "
        "trainer.gradient_checkpointing=false,true",
        "model=gpt2_large world=8 zero=stage3 data.seq_len=2048 trainer.micro_batch_size=4",
    ],
    # 256k vocabulary, tied embeddings, GQA, head_dim 192 (attention 3072 wide on a 2048 hidden).
    "bigvocab": [
        "model=llama_bigvocab world=1 zero=stage2 data.seq_len=2048,4096 trainer.micro_batch_size=1,2 "
        "trainer.gradient_checkpointing=false,true",
        "model=llama_bigvocab world=8 zero=stage3 data.seq_len=4096 trainer.micro_batch_size=1",
    ],
    # This CPU-only machine: the tiny Llama in worlds of 8 and 64 (bf16 trains on CPU; fp16 does not).
    "tiny_cpu": [
        "model=llama_tiny world=8,64 zero=stage1,stage2,stage3 data.seq_len=128",
        "model=llama_tiny world=64 zero=stage1 data.seq_len=128 trainer.gradient_accumulation_steps=4",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="rows.jsonl and each point's output go here")
    ap.add_argument("--suite", action="append", default=[], choices=sorted(SUITES))
    ap.add_argument("--point", action="append", default=[], help="'world=N key=value ...' (lists expand)")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps a point trains")
    ap.add_argument("--budget-s", type=float, default=540, help="start no point after this many seconds")
    ap.add_argument("--timeout-s", type=float, default=300, help="most seconds one point may take")
    ap.add_argument("--again", action="store_true", help="rerun points that have a row already")
    ap.add_argument("--list", action="store_true", help="print the points, run nothing")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.overrides, a.steps, a.out)
    points = expand([line for s in a.suite for line in SUITES[s]] + a.point)
    if a.list or not a.out:
        print("\n".join(" ".join(p) for p in points))
        return None
    run_all(points, a)
    return None


def expand(lines: list[str]) -> list[list[str]]:
    """Each line's comma lists as a product, in Hydra's -m order (the pipeline's own expansion)."""
    from pipeline.check.compose import sweep_points

    return [point for line in lines for point in sweep_points(shlex.split(line), multirun=True)]


def world_overrides(point: list[str]) -> tuple[int, list[str]]:
    """world=N -> N and the pipeline's overrides for it (8 ranks a node; fewer on one node)."""
    world = 1
    rest = []
    for o in point:
        if o.startswith("world="):
            world = int(o.split("=", 1)[1])
        else:
            rest.append(o)
    per_node = min(RANKS_PER_NODE, world)
    if world % per_node:
        raise SystemExit(f"world={world}: not a whole number of {RANKS_PER_NODE}-rank nodes")
    return world, [*rest, f"trainer.nproc_per_node={per_node}", f"trainer.nnodes={world // per_node}"]


def run_all(points: list[list[str]], a: argparse.Namespace) -> None:
    a.out.mkdir(parents=True, exist_ok=True)
    rows = a.out / "rows.jsonl"
    done = set()
    if rows.exists() and not a.again:
        done = {json.loads(line)["point"] for line in rows.read_text().splitlines() if line.strip()}
    t0 = time.perf_counter()
    for i, point in enumerate(points):
        key = " ".join(point)
        if key in done:
            print(f"[{i + 1}/{len(points)}] {key}: has a row, skipped", flush=True)
            continue
        left = a.budget_s - (time.perf_counter() - t0)
        if left < 30:
            print(f"budget spent: {len(points) - i} points left; run the same command again", flush=True)
            break
        out = a.out / f"point{i:03d}"
        cmd = [sys.executable, __file__, "--child", "--steps", str(a.steps), "--out", str(out), "--", *point]
        print(f"[{i + 1}/{len(points)}] {key}", flush=True)
        row = run_point(cmd, min(a.timeout_s, left), out)
        row = {"point": key, "steps": a.steps, "command": shlex.join(cmd), **row}
        with rows.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print("   " + brief(row), flush=True)


def run_point(cmd: list[str], timeout: float, out: Path) -> dict:
    """The child's ROW (its status ok, oom or refused), or a crash / timeout with the output's tail."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        text, _ = proc.communicate(timeout=timeout)
        status = None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        status = "timeout"
    (out / "output.log").write_text(text)
    wall = round(time.perf_counter() - t0, 1)
    for line in reversed(text.splitlines()):
        if line.startswith("ROW "):
            return {**json.loads(line[4:]), "wall_s": wall}
    return {"status": status or f"crash (exit {proc.returncode})", "wall_s": wall, "tail": text[-3000:]}


def brief(row: dict) -> str:
    plan = row.get("plan_gpu_peak_gib")
    gpu = row.get("gpu_peak_gib")
    host = row.get("node_host_gib")
    parts = [row["status"], f"{row['wall_s']} s"]
    if plan is not None:
        parts.append(f"plan {plan:.2f} GiB/GPU")
    if gpu is not None:
        parts.append(f"peak {gpu:.2f} ({gpu / plan - 1:+.0%})" if plan else f"peak {gpu:.2f}")
    if host is not None:
        parts.append(f"host/node {host:.2f} (plan {row['plan_host_gib']:.2f})")
    return ", ".join(parts)


def child(point: list[str], steps: int, out: Path) -> None:
    """One point, in this process: rank 0 of a fake world of N; prints its ROW."""
    world, overrides = world_overrides(point)
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(min(RANKS_PER_NODE, world)),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",
    )
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pipeline import plan as planning
    from pipeline.check import rules
    from pipeline.check.compose import compose_point
    from pipeline.errors import ConfigError
    from pipeline.job import Job
    from pipeline.rank import cpu_probe, model, tokenizer, train

    cuda = torch.cuda.is_available()
    cfg = compose_point([*BASE, f"trainer.max_steps={steps}", *overrides])
    out.mkdir(parents=True, exist_ok=True)
    plan = planning.make(cfg, out, use_cpu=not cuda)
    m = plan.memory
    row: dict = {
        "world": world,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "params": plan.params,
        "plan_gpu_peak_gib": m.gpu_peak / GIB,
        "plan_model_states_gib": m.gpu_model_states / GIB,
        "plan_buffers_gib": m.gpu_buffers / GIB,
        "plan_activations_gib": m.gpu_activations / GIB,
        "plan_host_gib": m.host_model_states / GIB,  # per node
    }
    try:
        rules.check(cfg)
    except ConfigError as e:
        return emit({**row, "status": "refused", "error": str(e)})
    cpu_probe.remember()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    peaks = Peaks(cuda)
    if cuda:
        peaks.watch_phases()
    try:
        job = Job.of(cfg, plan, out, world)
        arch = model.model_config(cfg, tokenizer.BYTE_VOCAB)
        net, args = train.model_and_arguments(job, arch)
        peaks.built = rss()
        trainer = make_trainer(net, args, arch.vocab_size, cfg, peaks)
        trainer.train()
    except torch.OutOfMemoryError as e:
        return emit({**row, **peaks.figures(), "status": "oom", "error": str(e).splitlines()[0]})
    finally:
        dist.destroy_process_group()  # else gloo/NCCL may abort at exit (FACTS.md)
    engine = trainer.model_wrapped
    return emit(
        {
            **row,
            **peaks.figures(),
            "status": "ok",
            "optimizer": type(getattr(engine, "optimizer", None)).__name__,
            "dp_world_size": getattr(engine, "dp_world_size", None),
            "step_s": peaks.step_s(),
        }
    )


def emit(row: dict) -> None:
    print("ROW " + json.dumps(row), flush=True)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def make_trainer(net, args, vocab: int, cfg, peaks):
    """The pipeline's Trainer set-up, with data drawn per index: N ranks' share of random tokens."""
    import torch
    from torch.utils.data import Dataset
    from transformers import Trainer

    class RandomTokens(Dataset):
        def __len__(self) -> int:
            return cfg.trainer.max_steps * cfg.global_batch

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(0, vocab, (cfg.data.seq_len,), generator=g)
            return {"input_ids": ids, "labels": ids}

    return Trainer(model=net, args=args, train_dataset=RandomTokens(), callbacks=[peaks.callback()])


class Peaks:
    """Rank 0's memory: GPU peaks from the first step on (as the pipeline's summary counts them, after
    the engine is built) and over the whole process; host RSS after the model is built, once the
    engine is, and its peak. On a GPU also each phase of a step (the engine's forward, backward and
    step): what was allocated before it, its own peak, and what it left, to tell the plan's terms apart."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.built = self.engine = self.host_peak = 0
        self.init_gpu_peak = self.init_reserved = 0
        self.times: list[float] = []
        self.stepping = False  # the run's peak counts from the first step, as the pipeline's does
        self.run_peak = self.run_reserved = 0
        self.phases: dict[str, dict[str, float]] = {}

    def fold(self) -> None:
        import torch

        if self.stepping:
            self.run_peak = max(self.run_peak, torch.cuda.max_memory_allocated())
            self.run_reserved = max(self.run_reserved, torch.cuda.max_memory_reserved())

    def watch_phases(self) -> None:
        """Wrap DeepSpeedEngine.forward/backward/step (this benchmark's process only): each call's
        allocated before, peak during and allocated after, the highest peak of each phase kept."""
        import torch
        from deepspeed.runtime.engine import DeepSpeedEngine

        peaks = self

        def measured(name: str, run):
            def timed(engine, *args, **kwargs):
                peaks.fold()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                result = run(engine, *args, **kwargs)
                torch.cuda.synchronize()
                peak, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
                peaks.fold()
                if peak / GIB >= peaks.phases.get(name, {}).get("peak_gib", 0):
                    figures = {"before_gib": before, "peak_gib": peak, "after_gib": after}
                    peaks.phases[name] = {k: v / GIB for k, v in figures.items()}
                return result

            return timed

        for name in ("forward", "backward", "step"):
            setattr(DeepSpeedEngine, name, measured(name, getattr(DeepSpeedEngine, name)))

    def callback(self):
        import torch
        from transformers import TrainerCallback

        peaks = self

        class Track(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                peaks.engine = rss()
                if peaks.cuda:
                    peaks.init_gpu_peak = torch.cuda.max_memory_allocated()
                    peaks.init_reserved = torch.cuda.max_memory_reserved()
                    torch.cuda.reset_peak_memory_stats()
                    peaks.stepping = True
                peaks.times.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                if peaks.cuda:
                    torch.cuda.synchronize()
                peaks.times.append(time.perf_counter())
                peaks.host_peak = max(peaks.host_peak, rss())

        return Track()

    def step_s(self) -> float | None:
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return round(sorted(gaps)[len(gaps) // 2], 4) if gaps else None

    def figures(self) -> dict:
        import torch

        ranks = int(os.environ["LOCAL_WORLD_SIZE"])
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        host = {
            "host_after_build_gib": self.built / GIB,
            "host_after_engine_gib": self.engine / GIB,
            "host_peak_gib": maxrss / GIB,  # the process's high-water mark, start-up included
            # A node's ranks are alike in a fake world: rank 0's peak times the ranks of a node.
            "node_host_gib": maxrss * ranks / GIB,
        }
        if not self.cuda:
            return host
        return {
            **host,
            "gpu_peak_gib": max(self.run_peak, torch.cuda.max_memory_allocated()) / GIB,
            "gpu_reserved_gib": max(self.run_reserved, torch.cuda.max_memory_reserved()) / GIB,
            "gpu_init_peak_gib": self.init_gpu_peak / GIB,
            "gpu_init_reserved_gib": self.init_reserved / GIB,
            "phases": self.phases,
        }


if __name__ == "__main__":
    main()
