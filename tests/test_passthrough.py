"""`deepspeed.<key>=value`: any DeepSpeed key no group covers reaches DeepSpeed, nested ones too, and
DeepSpeed acts on it (its refusals and typos: tests/test_bad_input.py)."""

import json
from pathlib import Path

from helpers import ok, run_pipeline


def test_deepspeed_keys_no_group_covers_reach_deepspeed_and_it_acts_on_them(outputs: Path):
    result = ok(
        run_pipeline(
            outputs,
            "deepspeed.wall_clock_breakdown=true",  # overrides the plan's own choice (false)
            "deepspeed.flops_profiler.enabled=true",  # a section the plan has not
            "deepspeed.flops_profiler.profile_step=2",
            "trainer.max_steps=3",
        )
    )
    (planned,) = outputs.glob("runs/*/deepspeed.json")
    ds = json.loads(planned.read_text())
    assert ds["wall_clock_breakdown"] is True
    assert ds["flops_profiler"] == {"enabled": True, "profile_step": 2}
    printed = result.stdout + result.stderr
    assert "DeepSpeed Flops Profiler" in printed  # the profiler ran at step 2
    assert "time (ms) | fwd_microstep:" in printed  # the wall-clock breakdown, each step
