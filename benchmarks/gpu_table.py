"""Side-by-side GPU benchmark: the pipeline against the hand-written Trainer + DeepSpeed reference.

Runs on the device, in one call. For each variant it first runs a warm-up (JIT op builds and
compilation land there, not in the timing), then the reference and the pipeline in pairs (with
the pipeline with tracking off too, or without its sampler, unless --tracking on or off: triples),
who goes first rotating (or, with --alongside, each pipeline run beside a reference run started at
the same moment on the other of two GPUs), and prints a Markdown table: step time, tokens/s, model
TFLOP/s, MFU, peak GPU memory, final loss and the ratio pipeline / reference. Perf-preset rows run
the pipeline only and are compared with the reference's same-stage row.
usage: python benchmarks/gpu_table.py --reference PATH --out DIR [--variants z2,z3 ...] [--presets ...]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CEILING_TFLOPS = 798.0  # the H100's measured bf16 matmul ceiling (shared/reference/README.md)
STEPS, WARM = 30, 8
# The DeepSpeed op each variant JIT-builds on its first run (the call's warm-up run builds it once).
OP = {"z0": "fused_adam", "z1": "fused_adam", "z2": "fused_adam", "z3": "fused_adam"}
OP |= {"z2_off": "cpu_adam", "z3_off": "cpu_adam", "z3_nvme": "async_io"}

# Reference variant -> the pipeline's overrides for the same settings.
SAME: dict[str, list[str]] = {
    "z0": ["zero=stage0"],
    "z1": ["zero=stage1"],
    "z2": ["zero=stage2"],
    "z3": ["zero=stage3"],
    "z2_off": ["zero=stage2", "offload=cpu"],
    "z3_off": ["zero=stage3", "offload=cpu"],
    "z3_nvme": [
        "zero=stage3",
        "offload=nvme",
        "offload.nvme_path=/tmp/nvme_offload_pipeline",
        "offload.aio.block_size=1048576",
        "offload.aio.thread_count=4",
        "offload.param_buffer_size=200000000",
    ],
}
# name -> (reference variant it is compared with, extra pipeline overrides)
PRESETS: dict[str, tuple] = {
    "z2+compile": ("z2", ["perf=compile"]),
    "z2+compile_mbs16": ("z2", ["perf=compile_mbs16"]),
    "z2+compile_mbs32": ("z2", ["perf=compile_mbs32"]),
    "z3+deepcompile": ("z3", ["perf=deepcompile"]),
    "z3+resident": ("z3", ["perf=resident"]),
    "z3+resident_mbs32": ("z3", ["perf=resident", "trainer.micro_batch_size=32"]),
    "z3+resident_compile": ("z3", ["perf=resident", "trainer.torch_compile=true"]),
    "z2_off+compile_mbs16": ("z2_off", ["perf=compile_mbs16"]),
    "z3_off+compile_mbs16": ("z3_off", ["perf=compile_mbs16"]),
    # Gradient reductions in fp32 instead of the bf16 that DeepSpeed uses by default with bf16.
    "z2+comm_fp32": ("z2", ["zero.communication_data_type=fp32"]),
    "z3+comm_fp32": ("z3", ["zero.communication_data_type=fp32"]),
    # The 1B on NVMe (z3_nvme's reference trains the small model): its GPU and host peaks, no ratio.
    "z3_nvme+1b": ("z3_nvme", ["model=llama_1b"]),
    # fp16 with DeepSpeed's dynamic loss scaling, against the reference's bf16 (its overflow skips
    # in the row's name).
    "z2+fp16": ("z2", ["precision=fp16"]),
    "z3+fp16": ("z3", ["precision=fp16"]),
    # Activation checkpointing: the plan's activation term with it, against the measured peak.
    "z2+gc": ("z2", ["trainer.gradient_checkpointing=true"]),
    "z3+gc": ("z3", ["trainer.gradient_checkpointing=true"]),
    # LoRA r=16 on every linear layer (issue 33): against the full fine-tune of its variant.
    "z2+lora": ("z2", ["peft=lora", "peft.r=16"]),
    "z3+lora": ("z3", ["peft=lora", "peft.r=16"]),
    # QLoRA: the frozen base in 4 bits (bitsandbytes), the same adapter.
    "z2+qlora": ("z2", ["peft=qlora", "peft.r=16"]),
    "z3+qlora": ("z3", ["peft=qlora", "peft.r=16"]),
    # precision=fp8 (torchao float8 linear layers, compiled) against bf16 compiled (z2+compile):
    # speed on the reference's random tokens; the loss on the shipped text (random tokens teach nothing).
    "z2+fp8": ("z2", ["precision=fp8"]),
    "z3+fp8": ("z3", ["precision=fp8"]),
    "z2+fp8_mbs32": ("z2", ["perf=compile_mbs32", "precision=fp8"]),
    "z2+fp8_rowwise_mbs32": ("z2", ["perf=compile_mbs32", "precision=fp8", "precision.fp8_recipe=rowwise"]),
    "z2+compile_text": ("z2", ["perf=compile", "data=tiny_corpus", "data.seq_len=1024"]),
    "z2+fp8_text": ("z2", ["precision=fp8", "data=tiny_corpus", "data.seq_len=1024"]),
    # Liger's kernels (issue 35 item 2): the fused linear cross-entropy holds no logits, so a larger
    # micro batch fits; eager and compiled.
    "z2+liger": ("z2", ["trainer.liger_kernel=true"]),
    "z2+liger_mbs32": ("z2", ["trainer.liger_kernel=true", "trainer.micro_batch_size=32"]),
    "z2+liger_compile_mbs32": ("z2", ["perf=compile_mbs32", "trainer.liger_kernel=true"]),
    "z2+liger_compile_mbs64": (
        "z2",
        ["perf=compile_mbs32", "trainer.liger_kernel=true", "trainer.micro_batch_size=64"],
    ),
}


def size(variant: str) -> str:
    return "small" if variant == "z3_nvme" else "1b"


def pipeline_cmd(
    variant: str,
    extra: list[str],
    out: Path,
    model: list[str] | None = None,
    tracking: bool = True,
    gpus: int = 1,
    steps: int = STEPS,
    warm: int = WARM,
) -> list[str]:
    """The pipeline's CLI with the reference's settings (model, data, bf16, DS AdamW, lr, warmup,
    steps); the trained model is not saved (the reference saves none)."""
    model = model or [f"model={'llama_small' if size(variant) == 'small' else 'llama_1b'}"]
    return [
        sys.executable,
        "-m",
        "pipeline",
        *model,
        "data=random_tokens",
        "precision=bf16",
        "optimizer=adamw",
        "optimizer.lr=3e-4",
        "scheduler=warmup_linear",
        "scheduler.warmup_steps=2",
        # The reference averages from the end of step WARM+1 on (its clock's first mark): skip as many.
        # Micro batch 8 is the pipeline's default (a perf preset sets its own; the command line would win).
        f"trainer.max_steps={steps}",
        f"trainer.timing_warmup_steps={warm + 1}",
        # No data-loader workers (the pipeline's default): with 2 per rank, as the reference has,
        # the 2-GPU batch fetch cost the pipeline 54-100 ms a step (RESULTS.md, sixth session).
        "trainer.save_model=false",
        f"trainer.nproc_per_node={gpus}",
        f"tracking.enabled={str(tracking).lower()}",
        f"hydra.run.dir={out}",
        *SAME[variant],
        *extra,
    ]


def run_logged(cmd: list[str], timeout: int, env: dict, log: Path) -> str | None:
    """Runs cmd from the repository root and returns its output (stdout and stderr), or None when it
    failed or ran past timeout (its output's tail printed). Each line also goes to log with the
    seconds since launch, so both sides' start-up phases (imports, engine set-up, first step) can
    be timed from the same clock."""
    print("$ " + " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe, merged = subprocess.PIPE, subprocess.STDOUT
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, text=True, stdout=pipe, stderr=merged, start_new_session=True
    )
    # The process group is killed at the deadline: a silent, hung run must not block the read below.
    timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    lines = []
    with log.open("w") as stamped:
        for line in proc.stdout:
            lines.append(line)
            stamped.write(f"{time.perf_counter() - t0:8.2f} {line}")
    proc.wait()
    timer.cancel()
    wall = time.perf_counter() - t0
    output = "".join(lines)
    if proc.returncode:
        late = wall >= timeout
        print(f"timed out after {timeout} s" if late else output[-6000:], flush=True)
        return None
    print(f"  ({wall:.0f} s)", flush=True)
    return output


def run_pipeline(
    variant: str, extra: list[str], out: Path, timeout: int, env: dict | None = None, **how
) -> dict | None:
    """Trains one pipeline job (pipeline_cmd's keywords in how; env added to this process's) and
    returns its summary.json (None if it failed)."""
    cmd = pipeline_cmd(variant, extra, out, **how)
    Path("/tmp/nvme_offload_pipeline").mkdir(parents=True, exist_ok=True)
    output = run_logged(cmd, timeout, {**os.environ, **(env or {})}, out / "stamped.log")
    if output is None:
        return None
    res = json.loads((out / "summary.json").read_text())
    plan = json.loads((out / "memory.json").read_text())
    return {
        "step_s": res["avg_step_time_s"],
        "tok_s": res["avg_tokens_per_s"],
        "tflops": res["model_tflops"],
        "peak_gib": res["peak_memory_gib"],
        # The memory plan's figure per GPU (memory.json), beside the measured peak.
        "plan_gib": plan["gpu_peak"] / 2**30,
        # Rank 0's host RSS peak beside the plan's host figure (offloaded states live there).
        "host_gib": res["peak_host_gib"],
        "plan_host_gib": plan["host_model_states"] / 2**30,
        "loss_last": res["final_loss"],
        "gpus": how.get("gpus", 1),
        "overflow_skips": res.get("overflow_skips"),
    }


def run_reference(
    reference: Path,
    variant: str,
    out: Path,
    timeout: int,
    steps: int = STEPS,
    warm: int = WARM,
    gpus: int = 1,
    env: dict | None = None,
) -> dict | None:
    """Runs the hand-written trainer through torchrun and parses its 'RESULT {json}' line (rank 0's:
    its tokens/s and TFLOP/s are one rank's, scaled here to all ranks as the pipeline counts them)."""
    env = {**os.environ, **(env or {}), "BENCH_SIZE": size(variant), "BENCH_STEPS": str(steps)}
    env["BENCH_WARM"] = str(warm)
    # torchrun gives each of several ranks 1 CPU thread, which ran the reference's CPU Adam 3x slower
    # than the pipeline's ranks (an equal share of the host's CPUs each): the same share on both sides.
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // gpus)))
    cmd = ["torchrun", "--nproc_per_node", str(gpus), str(reference.resolve()), variant, str(out)]
    output = run_logged(cmd, timeout, env, out / "stamped.log")
    for line in (output or "").splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            return {**res, "tok_s": res["tok_s"] * gpus, "tflops": res["tflops"] * gpus, "gpus": gpus}
    return None


def mean_run(runs: list[dict | None]) -> dict | None:
    """The runs' mean figures (None if any failed): step time, and tokens/s and TFLOP/s from it."""
    if not runs or any(r is None for r in runs):
        return None
    step_s = sum(r["step_s"] for r in runs) / len(runs)
    first = runs[0]
    return {
        **first,
        "step_s": step_s,
        "tok_s": first["tok_s"] * first["step_s"] / step_s,
        "tflops": first["tflops"] * first["step_s"] / step_s,
        "peak_gib": max(r["peak_gib"] for r in runs),
    }


def row(name: str, who: str, r: dict | None, base: dict | None) -> str:
    if r is None:
        return f"| {name} | {who} | failed | | | | | | | | |"
    ratio = f"{r['tok_s'] / base['tok_s']:.3f}" if base and who != "reference" else ""
    plan = host = ""
    if "plan_gib" in r:
        plan = f"{r['plan_gib']:.1f} ({100 * (r['plan_gib'] / r['peak_gib'] - 1):+.0f}%)"
        host = f"{r['host_gib']:.1f} / {r['plan_host_gib']:.1f}"
    mfu = 100 * r["tflops"] / (CEILING_TFLOPS * r["gpus"])
    speed = f"{r['step_s']:.4f} | {r['tok_s']:,.0f} | {r['tflops']:.1f} | {mfu:.1f}%"
    peak = f"{r['peak_gib']:.1f} | {plan} | {host}"
    return f"| {name} | {who} | {speed} | {peak} | {r['loss_last']:.4f} | {ratio} |"


def ratio_row(name: str, label: str, ratio: str) -> str:
    """A row with a ratio only (a mean of paired ratios, or tracking on / off)."""
    return f"| {name} | {label} | | | | | | | | | {ratio} |"


def rotated(sides: list[str], i: int) -> list[str]:
    """The sides in the order of the i-th round (0 first): who goes first moves on each round, as a
    later run may find the host warmer or busier."""
    k = i % len(sides)
    return sides[k:] + sides[:k]


def scaling_row(
    variant: str, extra: list[str], many: dict | None, a: argparse.Namespace, how: dict, name: str = ""
) -> str:
    """The pipeline on one GPU (the first), beside its N-GPU mean: N-GPU tokens/s over N times the
    one GPU's, in the ratio column."""
    one = run_pipeline(
        variant,
        extra,
        a.out / "one_gpu" / (name or variant),
        a.timeout,
        env={"CUDA_VISIBLE_DEVICES": "0"},
        **{**how, "gpus": 1},
    )
    text = row(f"{name or variant} on 1 GPU (scaling)", "pipeline", one, None)
    if one and many:
        text = text.rstrip("|").rstrip() + f" {many['tok_s'] / (a.gpus * one['tok_s']):.3f} |"
    print(text, flush=True)
    return text


# --tracking -> the third run of each triple, beside the reference and the pipeline with tracking on:
# (its name, its folder, pipeline_cmd's keywords it changes, its extra overrides).
THIRD: dict[str, tuple[str, str, dict, list[str]]] = {
    "both": ("tracking off", "pipe_off", {"tracking": False}, []),
    # Tracking on without the system-metrics sampler: what the sampler alone costs.
    "sampler": ("no sampler", "pipe_nosampler", {}, ["tracking.system_metrics=false"]),
}


def run_side(
    who: str, v: str, run_dir: str, a: argparse.Namespace, how: dict, timing: dict, env: dict | None = None
) -> dict | None:
    """One run of a variant's pair (or triple): the reference, the pipeline as asked, or the
    triple's third run (THIRD); env added to this process's."""
    if who == "reference":
        out = a.out / "ref" / run_dir
        return run_reference(a.reference, v, out, a.timeout, gpus=a.gpus, env=env, **timing)
    if who == "pipeline":
        return run_pipeline(v, [], a.out / "pipe" / run_dir, a.timeout, env=env, **how)
    _, folder, change, extra = THIRD[a.tracking]
    return run_pipeline(v, extra, a.out / folder / run_dir, a.timeout, env=env, **{**how, **change})


def alongside(
    v: str, sides: list[str], a: argparse.Namespace, how: dict, timing: dict, emit: Callable[[str], None]
) -> dict[str, list[float]]:
    """Each pipeline run (sides) starts at the same moment as a reference run on the other of two
    GPUs, the GPUs swapping every round: a one-GPU run bound by the host's Python drifts by 10-30%
    over seconds, and runs side by side would share a drift of the host's. (On the device they
    spread as widely as runs one after the other: the drift is each run's own; RESULTS.md, twelfth
    session.) Each row goes to emit as its round ends; returns each side's ratios to the reference
    beside it."""
    cores = max(1, len(os.sched_getaffinity(0)) // 2)  # each run a half of the host, as on a 2-GPU node
    ratios: dict[str, list[float]] = {who: [] for who in sides}
    order = [who for i in range(a.repeat) for who in rotated(sides, i)]
    for k, who in enumerate(order):
        gpu = {"reference": k % 2, who: 1 - k % 2}
        run_dir = f"{v}_round{k + 1}"
        with ThreadPoolExecutor(2) as pool:
            started = {
                side: pool.submit(
                    run_side,
                    side,
                    v,
                    run_dir,
                    a,
                    how,
                    timing,
                    {"CUDA_VISIBLE_DEVICES": str(g), "OMP_NUM_THREADS": str(cores)},
                )
                for side, g in gpu.items()
            }
        runs = {side: f.result() for side, f in started.items()}
        ref, mine = runs["reference"], runs[who]
        if ref and mine:
            ratios[who].append(mine["tok_s"] / ref["tok_s"])
        for side in gpu:
            emit(row(f"{v} round {k + 1} (GPU {gpu[side]})", side, runs[side], ref))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default=",".join(SAME))
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--gpus", type=int, default=1, help="ranks, one GPU each, on both sides")
    ap.add_argument(
        "--tracking",
        choices=["on", "off", *THIRD],
        default="both",
        help="the pipeline's MLflow tracking: on (as users run it), off, or both (the default): "
        "a tracking-off run beside each pair, and the ratio on / off; sampler: as both, but the "
        "third run keeps tracking on without system metrics",
    )
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--warm", type=int, default=WARM, help="steps left out of the timing")
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="also the pipeline on one GPU per variant: scaling = N-GPU tokens/s / (N x 1-GPU tokens/s)",
    )
    ap.add_argument(
        "--ceiling", action="store_true", help="also the plain Trainer without DeepSpeed (DDP) on --gpus"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="reference/pipeline pairs (or triples) per variant; one-GPU ZeRO-3 varies ~20%% between runs",
    )
    ap.add_argument(
        "--alongside",
        action="store_true",
        help="each pipeline run beside a reference run started with it on the other of two GPUs "
        "(one GPU each): ratios of runs that met the same host",
    )
    ap.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="no warm-up run: this machine built the ops in an earlier call (a warm device machine), "
        "which leaves ~85 s of the call to the timed runs; on a fresh one the first run builds them",
    )
    a = ap.parse_args()
    if a.alongside and a.gpus != 1:
        ap.error("--alongside runs each side on one GPU of two: leave --gpus at 1")
    a.out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in a.variants.split(",") if v]
    presets = [p for p in a.presets.split(",") if p]
    timing = {"steps": a.steps, "warm": a.warm}
    how = {"gpus": a.gpus, "tracking": a.tracking != "off", **timing}
    lines = [
        f"{a.gpus} GPU(s), pipeline tracking {a.tracking}; tokens/s and TFLOP/s for all GPUs together",
        "",
        "| variant | who | s/step | tokens/s | model TFLOP/s | MFU | peak GiB | plan GiB (error) "
        "| host peak / plan GiB | last loss | pipeline/reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    refs: dict[str, dict | None] = {}
    built: set[str] = set()

    def save() -> str:
        """Rewrites table.md after every pair and preset row (each run's row is also printed as it
        ends): a call cut off by its time limit keeps what it measured."""
        table = "\n".join(lines) + "\n"
        (a.out / "table.md").write_text(table)
        return table

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)
        save()

    for v in variants:
        # Warm-up: the reference builds the ops this variant needs (fused_adam, cpu_adam, async_io).
        # Short (4 steps): only the op builds and caches matter here, not its timing.
        if OP[v] not in built and a.warmup:
            run_reference(a.reference, v, a.out / "warm" / v, a.timeout, steps=4, warm=1, gpus=a.gpus)
            built.add(OP[v])
        sides = ["reference", "pipeline", *([THIRD[a.tracking][0]] if a.tracking in THIRD else [])]
        if a.alongside:
            ratios = alongside(v, sides[1:], a, how, timing, emit)
            means = {who: sum(r) / len(r) if r else float("nan") for who, r in ratios.items()}
            for who, r in ratios.items():
                emit(ratio_row(f"{v} mean of {len(r)}", f"{who} / reference beside it", f"{means[who]:.3f}"))
            if a.tracking in THIRD:
                third = THIRD[a.tracking][0]
                emit(ratio_row(v, f"tracking on / {third}", f"{means['pipeline'] / means[third]:.3f}"))
            continue
        runs_of: dict[str, list] = {who: [] for who in sides}
        for i in range(1, a.repeat + 1):
            name, run_dir = (f"{v} #{i}", f"{v}_{i}") if a.repeat > 1 else (v, v)
            runs: dict[str, dict | None] = {}
            for who in rotated(sides, i - 1):  # ABBA for two
                runs[who] = run_side(who, v, run_dir, a, how, timing)
                print(row(name, who, runs[who], runs.get("reference")), flush=True)  # kept if cut off
                runs_of[who].append(runs[who])
            lines += [row(name, who, runs[who], runs["reference"]) for who in sides]
            save()
        refs[v] = mean_run(runs_of["reference"])
        mine = mean_run(runs_of["pipeline"])
        if a.repeat > 1:
            lines += [row(f"{v} mean", who, mean_run(runs_of[who]), refs[v]) for who in sides]
            save()
        if a.tracking in THIRD:
            third = THIRD[a.tracking][0]
            off = mean_run(runs_of[third])
            on_off = f"{mine['tok_s'] / off['tok_s']:.3f}" if mine and off else "failed"
            lines.append(ratio_row(v, f"tracking on / {third}", on_off))
            save()
        if a.scaling:
            lines.append(scaling_row(v, [], mine, a, how))
            save()
    for p in presets:
        base, extra = PRESETS[p]
        mine = run_pipeline(
            base, extra, a.out / "preset" / p.replace("+", "_"), a.timeout, **how
        )  # no "+" in a path
        # A preset that trains another model than its variant's reference has nothing to compare with.
        same_model = not any(x.startswith("model=") for x in extra)
        skips = mine and mine["overflow_skips"]
        name = p if skips is None else f"{p} ({skips} overflow skips)"
        lines.append(row(name, "pipeline", mine, refs.get(base) if same_model else None))
        print(lines[-1], flush=True)
        if a.scaling:
            lines.append(scaling_row(base, extra, mine, a, how, name=p))
        save()
    if a.ceiling:
        ddp = run_reference(a.reference, "torch", a.out / "ref" / "ddp", a.timeout, gpus=a.gpus, **timing)
        lines.append(row("plain Trainer, no DeepSpeed (DDP ceiling)", "reference", ddp, None))
        save()
    print(save())


if __name__ == "__main__":
    main()
