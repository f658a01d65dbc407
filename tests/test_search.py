"""search=fastest (issue 17, CPU part): Optuna over a tiny space on the tiny model, with a 'GPU'
of 15 MiB (launcher.gpu_mem_gib) and small ZeRO buckets, so that micro batch 8 and 4 cannot fit
(~33 and ~20 MiB) and 2 and 1 can. The search is SIGKILLed once its first trial has finished, then
rerun: it carries on in the same parent run without training that trial again. Its winner's
recipe then trains as `python -m pipeline experiment=<name>`."""

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ok, run_pipeline, runs, search_trials, start_pipeline, wait_for

pytestmark = pytest.mark.slow

SEARCH = (
    "search=fastest",
    "search.zero=[stage2]",
    "search.offload=[none]",
    "search.micro_batch_size=[8,4,2,1]",
    "search.gradient_checkpointing=[false]",
    "search.perf=[none]",
    "search.trials=2",
    "search.steps=2",
    "search.name=tiny_fastest",
    "trainer.timing_warmup_steps=1",
    "launcher.gpu_mem_gib=0.015",
    "zero.reduce_bucket_size=100000",
)


@dataclass
class Searched:
    outputs: Path
    killed_log: str  # the search's output up to its SIGKILL
    stdout: str  # the rerun's
    finished_before_kill: list[str]  # run ids of the trials that finished before the kill
    killed_at_ms: int


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Searched:
    root = tmp_path_factory.mktemp("search")
    outputs = root / "outputs"
    driver = start_pipeline(outputs, *SEARCH, log=root / "killed.log")
    wait_for("the search's parent run", lambda: list(outputs.glob("searches/*/sweep.json")), timeout=120)
    first = wait_for("a finished trial", lambda: _finished(outputs), timeout=240)
    os.kill(driver.pid, signal.SIGKILL)
    killed_at_ms = int(time.time() * 1000)
    driver.wait()
    rerun = ok(run_pipeline(outputs, *SEARCH, timeout=400))
    return Searched(outputs, (root / "killed.log").read_text(), rerun.stdout, first, killed_at_ms)


def _finished(outputs: Path) -> list[str]:
    return [r.info.run_id for r in search_trials(outputs) if r.info.status == "FINISHED"]


def test_points_that_cannot_fit_are_never_started(searched):
    trials = search_trials(searched.outputs)
    skipped = [r for r in trials if "zerosweep.skipped" in r.data.tags]
    assert skipped, "micro batch 8 or 4 was asked for and recorded as skipped"
    for run in skipped:
        point = json.loads(run.data.tags["zerosweep.search_point"])
        assert point["micro_batch_size"] in (8, 4)
        assert run.info.status == "KILLED" and "steps" not in run.data.metrics  # never trained
        assert run.data.tags["zerosweep.skipped"].startswith("needs ~")
    started = [json.loads(r.data.tags["zerosweep.search_point"]) for r in trials if r not in skipped]
    assert all(p["micro_batch_size"] in (2, 1) for p in started)
    assert "SKIPPED: needs ~" in searched.killed_log + searched.stdout


def test_an_interrupted_search_carries_on_without_repeating_finished_trials(searched):
    trials = search_trials(searched.outputs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in trials}
    assert len(parents) == 1  # the rerun carried on in the same parent run
    assert f"carrying on in search {parents.pop()}" in searched.stdout
    finished = [r for r in trials if r.info.status == "FINISHED"]
    keys = [r.data.tags["zerosweep.search_trial"] for r in finished]
    assert len(keys) == len(set(keys)), "a finished trial was trained again"
    assert set(searched.finished_before_kill) <= {r.info.run_id for r in finished}
    assert len(finished) + sum("zerosweep.pruned" in r.data.tags for r in trials) == 2  # search.trials
    trained_by_rerun = [
        r
        for r in trials
        if r.info.start_time > searched.killed_at_ms and "zerosweep.skipped" not in r.data.tags
    ]
    assert trained_by_rerun  # the second trial
    for run in trained_by_rerun:  # start-up and warm-up (compilation) timed apart from the steps
        metrics = run.data.metrics
        assert metrics["search_startup_s"] > 0 and metrics["search_warmup_s"] > 0
        assert metrics["search_wall_s"] > metrics["search_startup_s"] + metrics["search_warmup_s"]


def test_the_winners_recipe_trains(searched, tmp_path):
    recipe = searched.outputs / "conf" / "experiment" / "tiny_fastest.yaml"
    assert f"train it      python -m pipeline outputs_dir={searched.outputs} experiment=tiny_fastest" in (
        searched.stdout
    )
    assert f"recipe        {recipe}" in searched.stdout
    winner = next(line.split()[1] for line in searched.stdout.splitlines() if line.startswith("1 "))
    micro, accumulation = winner.removeprefix("mbs=").split("x")
    result = ok(run_pipeline(searched.outputs, "experiment=tiny_fastest", "trainer.max_steps=2"))
    assert "final loss" in result.stdout
    trained = runs(searched.outputs)[-1]  # the recipe's run: no parent, no search point
    assert "zerosweep.search_point" not in trained.data.tags and trained.info.status == "FINISHED"
    assert trained.data.params["trainer.micro_batch_size"] == micro
    assert trained.data.params["trainer.gradient_accumulation_steps"] == accumulation  # global batch 8 kept


def test_a_space_that_keeps_no_point_is_refused_before_anything_starts(outputs):
    result = run_pipeline(outputs, "search=fastest", "search.micro_batch_size=[3,5]")
    assert result.returncode == 2 and not outputs.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        "error: search.micro_batch_size: none of [3, 5] divides the batch per rank, 8"
        " (trainer.micro_batch_size"
        " x trainer.gradient_accumulation_steps). Fix: give divisors of 8, e.g. search.micro_batch_size=[1,8]"
    )
