"""Each perf preset composes and its choices reach the planned DeepSpeed JSON and TrainingArguments."""

import json
from pathlib import Path

import pytest

from pipeline.check import gate
from pipeline.check.compose import compose_point
from pipeline.plan import memory
from pipeline.report import console

from helpers import ROOT, mlflow_client, ok, run_pipeline, runs

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "perf").glob("*.yaml"))


def dry_run(out: Path, *overrides: str) -> tuple:
    """What `python -m pipeline dry_run=true ...` writes in its run dir (deepspeed.json,
    training_args.json), planned here by the same calls (a preset is pure composition)."""
    cfg = compose_point(["dry_run=true", *overrides])
    files = console.write_plan(out, gate.admit(cfg, out, use_cpu=True).plan)
    return json.loads(files.deepspeed.read_text()), json.loads(files.training_args.read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_plans(tmp_path: Path, preset: str) -> None:
    import yaml

    preset_yaml = yaml.safe_load((ROOT / "conf" / "perf" / f"{preset}.yaml").read_text()) or {}
    want = {
        **preset_yaml.get("trainer", {}),
        **preset_yaml.get("zero", {}),
    }  # a preset sets trainer/zero keys
    resident = want.get("stage3_param_persistence_threshold")
    ds, args = dry_run(
        tmp_path, f"perf={preset}", "zero=stage3" if resident else "zero=stage2", "precision=bf16"
    )
    mbs = want.get("micro_batch_size", 8)
    assert ds["train_micro_batch_size_per_gpu"] == mbs == args["per_device_train_batch_size"]
    assert args["torch_compile"] is want.get("torch_compile", False)
    assert ("compile" in ds) is want.get("deepcompile", False)
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if key in want:
            assert ds["zero_optimization"][key] == want[key]
    if resident:
        assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == resident


def test_the_command_line_wins_over_a_preset(tmp_path: Path) -> None:
    """perf=compile_mbs16 trainer.micro_batch_size=4: what the user typed trains (it was 16)."""
    ds, args = dry_run(tmp_path, "perf=compile_mbs16", "trainer.micro_batch_size=4")
    assert ds["train_micro_batch_size_per_gpu"] == 4 == args["per_device_train_batch_size"]
    assert args["torch_compile"] is True and ds["zero_optimization"]["reduce_bucket_size"] == 10**9


def test_none_changes_nothing(tmp_path: Path) -> None:
    (ds_a, args_a), (ds_b, args_b) = dry_run(tmp_path / "a", "perf=none"), dry_run(tmp_path / "b")
    args_a.pop("output_dir"), args_b.pop("output_dir")
    assert (ds_a, args_a) == (ds_b, args_b)


@pytest.mark.slow
def test_resident_keeps_the_loss_curve(tmp_path: Path) -> None:
    """perf=resident changes where ZeRO-3 keeps the weights, not what it computes: real training
    against plain ZeRO-3 at the same micro batch, same seed, gives the same losses step for step."""
    losses, planned_gpu = [], []
    for name, overrides in {"plain": ["trainer.micro_batch_size=16"], "resident": ["perf=resident"]}.items():
        out = tmp_path / name
        ok(run_pipeline(out, "zero=stage3", "trainer.max_steps=3", *overrides))
        (run,) = runs(out)
        ds = json.loads(next(out.glob("runs/*/deepspeed.json")).read_text())
        assert (ds["zero_optimization"]["stage3_param_persistence_threshold"] == 10**12) is (
            name == "resident"
        )
        assert ds["train_micro_batch_size_per_gpu"] == 16
        planned_gpu.append(json.loads(next(out.glob("runs/*/memory.json")).read_text())["gpu_model_states"])
        losses.append([m.value for m in mlflow_client(out).get_metric_history(run.info.run_id, "loss")])
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)
    assert planned_gpu[1] > planned_gpu[0]  # the memory plan counts the whole weights on each GPU


def test_liger_reaches_the_trainer_and_the_plan_holds_no_logits(tmp_path: Path) -> None:
    """trainer.liger_kernel=true: the Trainer's use_liger_kernel, and a memory plan without the
    logits (the fused cross-entropy keeps the hidden states' and the head's gradients instead)."""
    point = ["model=llama_1b", "precision=bf16", "trainer.micro_batch_size=32", "data.seq_len=1024"]
    point.append("dry_run=true")  # Liger runs on CUDA only: here the plan alone
    plans = {}
    for liger in (False, True):
        cfg = compose_point([*point, f"trainer.liger_kernel={str(liger).lower()}"])
        plan = gate.admit(cfg, tmp_path / str(liger), use_cpu=True).plan
        assert plan.training_args.get("use_liger_kernel", False) is liger
        plans[liger] = plan.memory
    tokens, vocab, hidden, layers = 32 * 1024, 32_000, 2048, 16
    logits = 6 * tokens * vocab  # the bf16 logits and their fp32 log-softmax (memory.LOG_SOFTMAX_BYTES)
    gradients = 2 * (tokens + vocab) * hidden
    fused = (1 - memory.LIGER_LAYER_FRACTION) * memory.LLAMA_LAYER_SAVED * tokens * hidden * layers
    diff = plans[False].gpu_activations - plans[True].gpu_activations
    assert diff == pytest.approx(logits - gradients + fused, rel=1e-3)  # layer_saved: its count, ~45.54
    assert plans[False].gpu_buffers == 6 * tokens * vocab  # the loss's gradients, over the buckets
    assert plans[True].gpu_buffers == memory.bucket_bytes(cfg)  # no loss gradients: the buckets whole
