"""What one job prints: the plan (dry run) and the closing summary, and the plan's files."""
import json
from pathlib import Path
from typing import Dict, Optional

from pipeline.plan import Plan

GIB = 2**30


def write_plan(out: Path, plan: Plan) -> Dict[str, Path]:
    """deepspeed.json (as DeepSpeed receives it), training_args.json and memory.json in the run dir."""
    out.mkdir(parents=True, exist_ok=True)
    args = {k: v for k, v in plan.training_args.items() if k != "deepspeed"}
    files = {"deepspeed": out / "deepspeed.json", "training_args": out / "training_args.json",
             "memory": out / "memory.json"}
    files["deepspeed"].write_text(json.dumps(plan.deepspeed, indent=2) + "\n")
    files["training_args"].write_text(json.dumps(args, indent=2) + "\n")
    files["memory"].write_text(json.dumps(plan.memory, indent=2) + "\n")
    return files


def write_result(out: Path, result: Dict[str, float]) -> Path:
    """summary.json: the job's closing figures, for scripts (the GPU benchmark reads it)."""
    path = out / "summary.json"
    path.write_text(json.dumps(result) + "\n")
    return path


def memory_lines(plan: Plan) -> str:
    m = plan.memory
    rows = [f"  model: {plan.params / 1e6:.2f}M parameters, world size {plan.world_size}",
            f"  per GPU: {m['gpu_model_states'] / GIB:.2f} GiB model states + ~{m['gpu_activations'] / GIB:.2f} GiB activations",
            f"  host (per node): {m['host_model_states'] / GIB:.2f} GiB model states"]
    if m["nvme"]:
        rows.append(f"  NVMe (per node): {m['nvme'] / GIB:.2f} GiB")
    return "\n".join(rows)


def print_plan(plan: Plan, files: Dict[str, Path]) -> None:
    args = {k: v for k, v in plan.training_args.items() if k != "deepspeed"}
    print("DeepSpeed config (resolved):")
    print(json.dumps(plan.deepspeed, indent=2))
    print("TrainingArguments:")
    print(json.dumps(args, indent=2))
    print("Expected memory (DeepSpeed's estimators):")
    print(memory_lines(plan))
    print(f"Written: {files['deepspeed']}  {files['training_args']}  {files['memory']}")
    print("dry run: nothing trained")


def print_result(name: str, result: Dict[str, float], files: Dict[str, Path], hydra_config: Path,
                 run_id: Optional[str], ui_command: Optional[str], on_gpu: bool) -> None:
    where = "GPU" if on_gpu else "host"
    print(f"\n== {name}: done ==")
    print(f"  final loss      {result['final_loss']:.4f}")
    print(f"  tokens/s        {result['avg_tokens_per_s']:,.0f}")
    print(f"  step time       {result['avg_step_time_s'] * 1000:.1f} ms")
    print(f"  peak {where} mem   {result['peak_memory_gib']:.2f} GiB")
    print(f"  DeepSpeed JSON  {files['deepspeed']}")
    print(f"  Hydra config    {hydra_config}")
    if run_id:
        print(f"  MLflow run      {run_id}")
        print(f"  open the UI     {ui_command}")
