"""Each perf preset composes and its choices reach the planned DeepSpeed JSON and TrainingArguments."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "perf").glob("*.yaml"))


def dry_run(tmp_path: Path, *overrides: str) -> tuple:
    """Plans one job (dry_run) and returns its deepspeed.json and training_args.json."""
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "pipeline", "dry_run=true", "tracking.enabled=false",
                    f"hydra.run.dir={out}", *overrides], cwd=ROOT, check=True, capture_output=True)
    return json.loads((out / "deepspeed.json").read_text()), json.loads((out / "training_args.json").read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_plans(tmp_path: Path, preset: str) -> None:
    import yaml

    want = yaml.safe_load((ROOT / "conf" / "perf" / f"{preset}.yaml").read_text())
    ds, args = dry_run(tmp_path, f"perf={preset}", "zero=stage2", "precision=bf16")
    mbs = want.get("micro_batch_size", 8)
    assert ds["train_micro_batch_size_per_gpu"] == mbs == args["per_device_train_batch_size"]
    assert args["torch_compile"] is want.get("torch_compile", False)
    assert ("compile" in ds) is want.get("deepcompile", False)
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if key in want:
            assert ds["zero_optimization"][key] == want[key]


def test_none_changes_nothing(tmp_path: Path) -> None:
    (ds_a, args_a), (ds_b, args_b) = dry_run(tmp_path / "a", "perf=none"), dry_run(tmp_path / "b")
    args_a.pop("output_dir"), args_b.pop("output_dir")
    assert (ds_a, args_a) == (ds_b, args_b)
