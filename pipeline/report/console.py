"""What one job prints: the plan (dry run) and the closing summary, and the plan's files."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.config import GIB, Config
from pipeline.errors import ConfigError
from pipeline.plan import Plan
from pipeline.plan.memory import MemoryPlan

if TYPE_CHECKING:  # types only: pipeline.job would load MLflow for the dry sweep's table
    from pipeline.check.fit import Capacity
    from pipeline.job import Summary


@dataclass
class PlanFiles:
    """The plan as written in the run dir, beside Hydra's own config.yaml."""

    deepspeed: Path
    training_args: Path
    memory: Path
    hydra_config: Path

    def all(self) -> list[Path]:
        """What the run keeps as artifacts."""
        return [self.deepspeed, self.training_args, self.memory, self.hydra_config]


def write_plan(out: Path, plan: Plan) -> PlanFiles:
    """deepspeed.json (as DeepSpeed receives it), training_args.json and memory.json in the run dir."""
    out.mkdir(parents=True, exist_ok=True)
    files = PlanFiles(
        out / "deepspeed.json",
        out / "training_args.json",
        out / "memory.json",
        out / ".hydra" / "config.yaml",
    )
    files.deepspeed.write_text(json.dumps(plan.deepspeed, indent=2) + "\n")
    files.training_args.write_text(json.dumps(_arguments(plan), indent=2) + "\n")
    files.memory.write_text(json.dumps(dataclasses.asdict(plan.memory), indent=2) + "\n")
    return files


def _arguments(plan: Plan) -> dict:
    """TrainingArguments without the DeepSpeed dict, which has a file of its own."""
    return {k: v for k, v in plan.training_args.items() if k != "deepspeed"}


def write_result(out: Path, summary: "Summary") -> Path:
    """summary.json: the job's closing figures, for scripts (the GPU benchmark reads it)."""
    path = out / "summary.json"
    path.write_text(json.dumps(summary.metrics()) + "\n")
    return path


def memory_lines(plan: Plan) -> str:
    m = plan.memory
    step = f" in backward, less than the optimizer step's {m.gpu_step / GIB:.2f} GiB"
    rows = [
        f"  model: {plan.params / 1e6:.2f}M parameters, world size {plan.world_size}",
        f"  per GPU: ~{m.gpu_peak / GIB:.2f} GiB at the peak: {m.gpu_model_states / GIB:.2f} GiB model states"
        f" + {m.gpu_activations / GIB:.2f} GiB activations + {m.gpu_buffers / GIB:.2f} GiB backward's own"
        " (the loss's gradients or ZeRO's buckets)" + (step if m.gpu_step > m.gpu_backward else ""),
        f"  host (per node): {m.host_model_states / GIB:.2f} GiB (the model as loaded, offloaded states)",
    ]
    if m.nvme:
        rows.append(f"  NVMe (per node): {m.nvme / GIB:.2f} GiB")
    return "\n".join(rows)


def print_plan(plan: Plan, files: PlanFiles) -> None:
    print("DeepSpeed config (resolved):")
    print(json.dumps(plan.deepspeed, indent=2))
    print("TrainingArguments:")
    print(json.dumps(_arguments(plan), indent=2))
    print("Expected memory (DeepSpeed's estimators):")
    print(memory_lines(plan))
    print(f"Written: {files.deepspeed}  {files.training_args}  {files.memory}")
    print("dry run: nothing trained")


def print_result(
    cfg: Config, name: str, summary: "Summary", files: PlanFiles, models: list[Path], run_id: str | None
) -> None:
    where = "GPU" if torch.cuda.is_available() else "host"
    print(f"\n== {name}: done ==")
    print(f"  final loss      {summary.final_loss:.4f}")
    print(f"  tokens/s        {summary.avg_tokens_per_s:,.0f}")
    print(f"  step time       {summary.avg_step_time_s * 1000:.1f} ms")
    print(f"  peak {where} mem   {summary.peak_memory_gib:.2f} GiB")
    if summary.final_eval_loss is not None:
        loss, perplexity = summary.final_eval_loss, summary.final_eval_perplexity
        print(f"  eval loss       {loss:.4f} (perplexity {perplexity:.2f})")
    for model in models:
        print(f"  trained model   {model}")
    print(f"  DeepSpeed JSON  {files.deepspeed}")
    print(f"  Hydra config    {files.hydra_config}")
    if run_id:
        print(f"  MLflow run      {run_id}")
        print(f"  open the UI     {ui_command(cfg)}")


def ui_command(cfg: Config) -> str:
    """How to open the UI on this run's store, its password masked. masked is imported here:
    pipeline.track loads MLflow, which a dry run never needs."""
    from pipeline.track.secrets import masked

    if cfg.tracking.uri:
        return f"python -m pipeline.ui --tracking-uri {masked(cfg.tracking.uri)}"
    return f"python -m pipeline.ui --outputs-dir {Path(cfg.outputs_dir).absolute()}"


def print_fit_table(
    rows: list[tuple[str, MemoryPlan | None, ConfigError | None]], capacity: "Capacity"
) -> None:
    """A dry sweep's answer to "which of my configs fit?": one row per point (its name, its plan's
    memory, or what refuses it), nothing trained."""
    from pipeline.check.fit import size

    have = f"{size(capacity.gpu)} per GPU" if capacity.gpu else "no GPU memory known (launcher.gpu_mem_gib)"
    host = f", host {size(capacity.host)}" if capacity.host else ""
    table = [["point", "GiB per GPU", "host GiB", "NVMe GiB", "fits"]]
    for name, memory, problem in rows:
        if memory is None:
            table.append([name, "", "", "", f"refused: {problem}"])
            continue
        figures = [memory.gpu_peak / GIB, memory.host_model_states / GIB]
        figures.append(memory.nvme / GIB)
        verdict = f"no: {problem.problem}" if problem else "yes" if capacity.gpu else "-"
        table.append([name, *(f"{x:.2f}" for x in figures), verdict])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"dry sweep: {len(rows)} points, held against {have}{host}; nothing trained")
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
