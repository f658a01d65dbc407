"""Real DeepSpeed training on CPU through the real CLI, asserted on what landed in MLflow."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.check import preflight

from helpers import ROOT, mlflow_client, ok, run_pipeline, runs

pytestmark = pytest.mark.slow
STEPS = 6


def finished_children(outputs: Path):
    children = [r for r in runs(outputs) if "mlflow.parentRunId" in r.data.tags]
    assert children and all(r.info.status == "FINISHED" for r in children), [r.info.status for r in children]
    return children


def loss_history(outputs: Path, run_id: str):
    return [(m.step, round(m.value, 5)) for m in mlflow_client(outputs).get_metric_history(run_id, "loss")]


@pytest.fixture(scope="module")
def six_point_sweep(tmp_path_factory):
    """The README's sweep: zero=stage1,stage2,stage3 x offload=none,cpu, one run after another."""
    outputs = tmp_path_factory.mktemp("sweep") / "outputs"
    result = ok(
        run_pipeline(
            outputs, "-m", "zero=stage1,stage2,stage3", "offload=none,cpu", f"trainer.max_steps={STEPS}"
        )
    )
    return outputs, result


def test_sweep_is_one_parent_with_a_child_per_point(six_point_sweep):
    outputs, result = six_point_sweep
    all_runs = runs(outputs)
    parents = [r for r in all_runs if r.data.tags.get("zerosweep.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = finished_children(outputs)
    assert len(children) == 6 and len(all_runs) == 7
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(f"zero=stage{z},offload={o}" for z in (1, 2, 3) for o in ("none", "cpu"))
    for r in children:
        p = r.data.params
        z, o = r.info.run_name.split(",")
        assert p["zero"] == z.split("=")[1] and p["zero.stage"] == z[-1]
        assert p["offload"] == o.split("=")[1] and p["offload.device"] == o.split("=")[1]
        assert p["precision"] == "fp32" and p["optimizer.name"] == "AdamW" and p["lr"] == "0.0003"
        m = r.data.metrics
        assert m["tokens_per_s"] > 0 and m["avg_tokens_per_s"] > 0 and m["peak_memory_gib"] > 0.1
        assert m["peak_host_gib"] == m["peak_memory_gib"]  # without a GPU, the host is the memory
        assert m["avg_step_time_s"] > 0 and m["steps"] == STEPS
        arts = {a.path for a in mlflow_client(outputs).list_artifacts(r.info.run_id)}
        assert {"deepspeed.json", "config.yaml", "training_args.json"} <= arts
    assert "6 points" in result.stdout and "zero=stage3,offload=cpu" in result.stdout


def assert_same_losses(history: list, reference: list, name: str) -> None:
    assert [step for step, _ in history] == [step for step, _ in reference], name
    assert [loss for _, loss in history] == pytest.approx([loss for _, loss in reference], abs=1e-4), name


def test_losses_are_equal_across_stages_and_offload(six_point_sweep, tmp_path):
    """Equal to float rounding: without a GPU, torch's AdamW steps where nothing is offloaded (over
    each stage's own layout of the parameters), DeepSpeedCPUAdam where it is."""
    outputs, _ = six_point_sweep
    histories = {r.info.run_name: loss_history(outputs, r.info.run_id) for r in finished_children(outputs)}
    reference = histories["zero=stage1,offload=none"]
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))  # one point per step, none repeated
    for name, history in histories.items():
        assert_same_losses(history, reference, name)
    # ZeRO-0 as a run of its own, in a fresh process: the same losses again.
    single = tmp_path / "outputs"
    result = ok(run_pipeline(single, "zero=stage0", f"trainer.max_steps={STEPS}"))
    (run,) = runs(single)
    assert_same_losses(loss_history(single, run.info.run_id), reference, "zero=stage0")
    assert run.info.run_id in result.stdout and "final loss" in result.stdout and "tokens/s" in result.stdout


def test_activation_checkpointing_trains_to_the_same_losses(six_point_sweep, tmp_path):
    """trainer.gradient_checkpointing=true recomputes each layer's activations in backward: the
    Trainer and the model take it (training_args.json), and on CPU the losses are the sweep's."""
    outputs, _ = six_point_sweep
    (reference,) = [r for r in finished_children(outputs) if r.info.run_name == "zero=stage1,offload=none"]
    single = tmp_path / "outputs"
    checkpointed = ("zero=stage1", "trainer.gradient_checkpointing=true", f"trainer.max_steps={STEPS}")
    ok(run_pipeline(single, *checkpointed))
    (run,) = runs(single)
    (args,) = single.glob("runs/*/training_args.json")
    assert json.loads(args.read_text())["gradient_checkpointing"] is True
    assert loss_history(single, run.info.run_id) == loss_history(outputs, reference.info.run_id)


def test_offload_json_matches_the_point(six_point_sweep):
    outputs, _ = six_point_sweep
    for path in outputs.glob("sweeps/*/*/deepspeed.json"):
        ds = json.loads(path.read_text())
        overrides = (path.parent / ".hydra" / "overrides.yaml").read_text()
        zero = ds["zero_optimization"]
        assert f"zero=stage{zero['stage']}" in overrides
        assert ("offload_optimizer" in zero) == ("offload=cpu" in overrides)
        assert ("offload_param" in zero) == ("offload=cpu" in overrides and zero["stage"] == 3)


def test_zero3_nvme_bf16_with_cosine_schedule(outputs):
    """The README's ZeRO-Infinity command; builds DeepSpeed's async_io op the first time."""
    result = ok(
        run_pipeline(
            outputs,
            "zero=stage3",
            "offload=nvme",
            "precision=bf16",
            "optimizer=adamw",
            "scheduler=warmup_cosine",
            f"trainer.max_steps={STEPS}",
        )
    )
    (run,) = runs(outputs)
    assert run.info.status == "FINISHED"
    assert run.data.params["offload.device"] == "nvme" and run.data.params["precision"] == "bf16"
    ds = json.loads(next(outputs.glob("runs/*/deepspeed.json")).read_text())
    assert ds["zero_optimization"]["offload_param"]["device"] == "nvme" and ds["bf16"]["enabled"] is True
    assert ds["scheduler"]["type"] == "WarmupCosineLR" and "aio" in ds
    swap = Path(ds["zero_optimization"]["offload_param"]["nvme_path"])
    assert swap.is_dir() and any(swap.rglob("*.swp")), "nothing was swapped to the NVMe path"
    # Not on an NVMe drive (outputs/ on this machine's disk): one warning line before it trains.
    warned = preflight.slow_drive_warning(swap)
    assert result.stderr.count("warning: offload.nvme_path:") == (1 if warned else 0)
    assert warned is None or warned in result.stderr
    assert len(loss_history(outputs, run.info.run_id)) == STEPS and "final loss" in result.stdout


LR = 3e-4  # optimizer.lr's default
# The learning rate each DeepSpeed scheduler gives steps 1-4 (logged after each), at the defaults:
# 2 warmup steps (log: 0, then all of it), OneCycle's one cycle over the run, LRRangeTest growing by
# its own lr each step (scheduler.lr_range_test_step_size=1).
SCHEDULES = {
    "warmup": [0, LR, LR, LR],  # up, then held
    "warmup_decay": [0, LR, LR, LR / 2],  # then down in a line, to 0 at the last step
    "warmup_cosine": [0, LR, LR / 2, LR * 1e-4],  # then down a cosine, to cos_min_ratio
    "one_cycle": [0.55 * LR, LR, 0.55 * LR, LR / 10],  # from lr/10 up to lr in 2 steps, back in 2
    "lr_range_test": [2 * LR, 3 * LR, 4 * LR, 5 * LR],  # up every step
}


def test_every_deepspeed_scheduler_trains(outputs):
    """Each DeepSpeed scheduler trains with its own keys (OneCycle and LRRangeTest once crashed in the
    ranks on warmup keys), and the lr it logs moves as that scheduler moves it."""
    result = ok(
        run_pipeline(
            outputs,
            "-m",
            f"scheduler={','.join(SCHEDULES)}",
            "trainer.max_steps=4",
            "scheduler.lr_range_test_step_size=1",
            "trainer.save_model=false",
        )
    )
    children = finished_children(outputs)
    assert len(children) == len(SCHEDULES), result.stdout[-2000:]
    for run in children:
        option = run.data.params["scheduler"]
        history = mlflow_client(outputs).get_metric_history(run.info.run_id, "learning_rate")
        assert [m.step for m in history] == [1, 2, 3, 4], option
        assert [m.value for m in history] == pytest.approx(SCHEDULES[option], rel=1e-3, abs=1e-12), option


def test_muon_trains_on_zero2_and_on_zero3_without_reduce_scatter_with_and_without_cpu_offload(outputs):
    """optimizer=muon: DeepSpeed 0.19's Muon (the guide's newest optimizer), which DeepSpeed builds from the
    JSON and tags the matrices for; ZeRO-3 takes it with zero.reduce_scatter=false (its rule). With CPU
    offload DeepSpeed 0.19.8 orthogonalizes on its own path (`_apply_muon_updates_cpu_offload`), so it is
    allowed and trained too. Eager here: torch.compile builds Muon's CPU kernels for ~50 s on 2 cores."""
    sweep = ("-m", "optimizer=muon", "zero=stage2,stage3", "offload=none,cpu", "zero.reduce_scatter=false")
    ok(run_pipeline(outputs, *sweep, "trainer.max_steps=4", "trainer.save_model=false",
                    env={"TORCHDYNAMO_DISABLE": "1"}))  # fmt: skip
    children = finished_children(outputs)
    points = sorted((r.data.params["zero"], r.data.params["offload"]) for r in children)
    assert points == [("stage2", "cpu"), ("stage2", "none"), ("stage3", "cpu"), ("stage3", "none")]
    for path in outputs.glob("sweeps/*/*/deepspeed.json"):
        ds = json.loads(path.read_text())
        assert ds["optimizer"]["type"] == "Muon" and ds["zero_optimization"]["reduce_scatter"] is False
    for run in children:
        losses = [loss for _, loss in loss_history(outputs, run.info.run_id)]
        assert len(losses) == 4 and losses[-1] < losses[0] - 0.5  # lr 0.02: Muon moves fast


def test_two_ranks_give_one_ranks_losses_at_the_same_global_batch(tmp_path):
    """ZeRO-0 and ZeRO-2 on 2 ranks (gloo, micro batch 8) train as 1 rank does at micro batch 16:
    the same 16 samples a step, the same losses, step for step. (ZeRO-1 and ZeRO-3 on 2 ranks against
    1 rank at accumulation 2: test_resume_gpu_count.py, up to its hang.)"""
    histories = {}
    for ranks, micro_batch in ((2, 8), (1, 16)):
        outputs = tmp_path / f"ranks{ranks}"
        ok(
            run_pipeline(
                outputs,
                "-m",
                "zero=stage0,stage2",
                f"trainer.nproc_per_node={ranks}",
                f"trainer.micro_batch_size={micro_batch}",
                f"trainer.max_steps={STEPS}",
                "trainer.save_model=false",
            )
        )
        children = finished_children(outputs)
        assert len(children) == 2
        for path in outputs.glob("sweeps/*/*/deepspeed.json"):
            assert json.loads(path.read_text())["train_batch_size"] == 16
        histories.update(
            {(ranks, r.data.params["zero"]): loss_history(outputs, r.info.run_id) for r in children}
        )
    reference = histories[(1, "stage0")]
    assert [step for step, _ in reference] == list(range(1, STEPS + 1))
    for key, history in histories.items():
        assert_same_losses(history, reference, str(key))


def test_zero3_init_builds_the_model_partitioned_and_trains_on_two_ranks(tmp_path):
    """model.zero3_init=true: HF builds the model under zero.Init, each rank making its share only. On
    CPU, zero.Init once counted one rank (DeepSpeed's communication backend not yet started) and refused
    the batch size (train_batch_size 16 != 8 x 1 x 1) before a step."""
    outputs = tmp_path / "outputs"
    partitioned = ("zero=stage3", "model.zero3_init=true", "trainer.nproc_per_node=2")
    ok(run_pipeline(outputs, *partitioned, f"trainer.max_steps={STEPS}", "trainer.save_model=false"))
    (run,) = runs(outputs)
    history = loss_history(outputs, run.info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1))
    assert history[-1][1] < history[0][1]


def test_heap_is_frozen_while_training_and_collectable_after(tmp_path):
    """Steps run with the long-lived heap out of the collector's full passes (benchmarks/RESULTS.md:
    ~35 ms a step on the 1B ZeRO-3 offload forward); the next point of a local sweep gets it back."""
    result = ok(
        subprocess.run(
            [sys.executable, str(ROOT / "tests" / "heap_probe.py"), str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    least_frozen, steps, frozen_after = map(int, result.stdout.split("FROZEN")[1].split())
    assert steps == 3 and least_frozen > 10_000, result.stdout[-2000:]
    assert frozen_after == 0
