"""A point that cannot fit never starts: each point's memory plan is held against the GPU memory
(launcher.gpu_mem_gib stands in for a GPU here) before it launches. The tiny model needs ~33 MiB
per GPU at micro batch 8 and ~10 MiB at micro batch 1 with small ZeRO buckets (DeepSpeed allocates
them whole: the default's would need 3.7 GiB); the 'GPU' has 15 MiB."""

import pytest

from pipeline import plan
from pipeline.check import fit
from pipeline.check.compose import compose_point
from pipeline.sweep.search.driver import Search

from helpers import artifact_text, ok, run_pipeline, runs

SMALL_GPU = ("launcher.gpu_mem_gib=0.015", "zero.reduce_bucket_size=100000")


def test_dry_sweep_says_which_points_fit(outputs):
    result = ok(run_pipeline(outputs, "-m", "trainer.micro_batch_size=8,1", *SMALL_GPU, "dry_run=true"))
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "dry sweep: 2 points, held against 15 MiB per GPU, host " + lines[0].split("host ")[1]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["trainer.micro_batch_size=8"].endswith("no: needs ~33 MiB per GPU, the GPU has 15 MiB")
    assert rows["trainer.micro_batch_size=1"].split()[-1] == "yes"
    assert not outputs.exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_a_sweep_skips_the_point_that_cannot_fit_and_runs_the_others(outputs, tmp_path):
    result = ok(
        run_pipeline(outputs, "-m", "trainer.micro_batch_size=8,1", *SMALL_GPU, "trainer.max_steps=3")
    )
    assert "point trainer.micro_batch_size=8 will be skipped: memory: needs ~33 MiB per GPU" in result.stderr
    children = {r.info.run_name: r for r in runs(outputs) if "mlflow.parentRunId" in r.data.tags}
    skipped, trained = children["trainer.micro_batch_size=8"], children["trainer.micro_batch_size=1"]
    assert trained.info.status == "FINISHED" and trained.data.metrics["steps"] == 3
    assert skipped.info.status == "KILLED" and "steps" not in skipped.data.metrics  # never trained
    assert skipped.data.tags["zerosweep.skipped"] == "needs ~33 MiB per GPU, the GPU has 15 MiB"
    assert "skipped, not trained: needs ~33 MiB" in artifact_text(
        outputs, skipped.info.run_id, "error.txt", tmp_path
    )
    table = [
        line.split() for line in result.stdout.splitlines() if line.startswith("trainer.micro_batch_size=")
    ]
    assert {row[0]: row[1] for row in table} == {
        "trainer.micro_batch_size=8": "SKIPPED",
        "trainer.micro_batch_size=1": "FINISHED",
    }
    (parent,) = [r for r in runs(outputs) if r.data.tags.get("zerosweep.role") == "sweep"]
    assert parent.info.status == "FINISHED"  # a skipped point is not a failure


@pytest.mark.slow
def test_check_fit_false_starts_it_anyway(outputs):
    result = ok(run_pipeline(outputs, *SMALL_GPU, "check_fit=false", "trainer.max_steps=2"))
    (run,) = runs(outputs)
    assert run.info.status == "FINISHED" and "final loss" in result.stdout


@pytest.mark.parametrize(
    ("gpu_gib", "first"),
    [
        ("80", {"micro_batch_size": 32, "gradient_checkpointing": False}),  # the best measured on an H100
        ("24", {"micro_batch_size": 32, "gradient_checkpointing": True}),  # 32 without: no fit
    ],
)
def test_the_search_starts_with_the_likely_fastest_point_that_fits(tmp_path, gpu_gib, first):
    """search=fastest's first trial for the 1B Llama at 8 x 4 sequences: the lowest ZeRO stage, no
    offload, torch.compile, the user's own precision (fp8 after it), the largest micro batch the plan
    lets start on the GPU given."""
    setting = ["model=llama_1b", "data=random_tokens", "precision=bf16"]
    setting += ["trainer.gradient_accumulation_steps=4"]
    overrides = ["search=fastest", *setting, f"launcher.gpu_mem_gib={gpu_gib}", f"outputs_dir={tmp_path}"]
    point = next(Search.checked(overrides, multirun=False).fitting())
    start = {"zero": "stage0", "offload": "none", "perf": "compile", "precision": None, "bucket_size": None}
    assert point == {**start, **first}


@pytest.mark.parametrize(
    ("offload", "node_gb", "refusal"),
    [
        # The 1B Llama's CPU-offloaded states (~23.7 GiB): no override spares host memory, so the fix
        # is more of it (not a GPU, not NVMe, which swaps through host buffers nearly as large).
        (
            "cpu",
            8,
            "needs ~23.7 GiB of host memory for the offloaded states, the node has 7.5 GiB. "
            "Fix: use a node with more memory or more nodes",
        ),
        # On NVMe it swaps its optimizer through 4 pinned host buffers a sub-group (1e9 parameters, so
        # all 0.94e9 here) large: ~21.7 GiB with the rest; sub-groups a tenth as large fit 16 GB.
        (
            "nvme",
            16,
            "needs ~21.7 GiB of host memory for the offloaded states, the node has 14.9 GiB. "
            "Fix: use zero.sub_group_size=100000000",
        ),
    ],
)
def test_a_point_short_of_host_memory_is_told_what_would_fit_it(tmp_path, offload, node_gb, refusal):
    """The 1B Llama, ZeRO-3, on Slurm nodes with too little host memory for what it offloads."""
    overrides = ["model=llama_1b", "zero=stage3", f"offload={offload}", "launcher=slurm"]
    overrides += [f"launcher.mem_gb={node_gb}", "launcher.gpu_mem_gib=80", f"outputs_dir={tmp_path}"]
    cfg = compose_point(overrides)
    error = fit.refusal(cfg, plan.make(cfg, tmp_path, use_cpu=True).memory, runs_here=False)
    assert str(error).endswith(f"{refusal}; check_fit=false starts it anyway")


@pytest.mark.parametrize(
    ("overrides", "gpu_gib", "fix"),
    [
        # The 6.7B-shaped Llama, ZeRO-3 on 64 GPUs: the weights kept gathered for reuse (up to 1e9, 2 bytes
        # each) are 1.9 of its 9.5 GiB; bounding them (and the prefetch) at 1e8 plans 7.9 GiB.
        (
            ["model=llama_7b", "zero=stage3", "trainer.nnodes=8"],
            8,
            "zero.stage3_max_live_parameters=100000000 zero.stage3_max_reuse_distance=100000000 or ",
        ),
        # A short reuse distance alone leaves the live bound's 1e9 gathered: the same fix, both at 1e8.
        (
            ["model=llama_7b", "zero=stage3", "trainer.nnodes=8", "zero.stage3_max_reuse_distance=100000000"],
            8,
            "zero.stage3_max_live_parameters=100000000 zero.stage3_max_reuse_distance=100000000 or ",
        ),
        # The 1B, ZeRO-2 on 8 GPUs with 2e9 reduce buckets: 7.3 of its 11.9 GiB, overlap_comm's second 3.7.
        (
            ["model=llama_1b", "zero=stage2", "zero.reduce_bucket_size=2000000000"],
            10,
            "zero.overlap_comm=false, zero=stage3 or zero.reduce_bucket_size=200000000;",
        ),
    ],
)
def test_a_point_whose_zero_knobs_dominate_is_told_them_first(tmp_path, overrides, gpu_gib, fix):
    base = ["data=random_tokens", "precision=bf16", "trainer.micro_batch_size=1", "trainer.nproc_per_node=8"]
    cfg = compose_point([*base, *overrides, f"launcher.gpu_mem_gib={gpu_gib}"])
    error = fit.refusal(cfg, plan.make(cfg, tmp_path, use_cpu=True).memory, runs_here=False)
    assert f"Fix: use {fix}" in str(error)
