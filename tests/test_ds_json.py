"""deepspeed_config=ds.json and `python -m pipeline.import`: a user's DeepSpeed JSON through the groups.

Golden: every JSON example of the guide (tests/ds_json/guide_*.json, cut from the guide as written) and
configs in the style of DeepSpeedExamples (ZeRO++, activation checkpointing, the profilers): the plan's
DeepSpeed dict carries every key of the file with HF's "auto" resolved by HF's own
HfTrainerDeepSpeedConfig from the plan's TrainingArguments (which raises on any mismatch), and
DeepSpeed's own parser reads the same batch, clipping, precision, stage, optimizer and scheduler from
both. What the plan adds beyond the file is what the file leaves to the groups' defaults."""

import copy
import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from deepspeed.runtime import lr_schedules
from deepspeed.runtime.config import DeepSpeedConfig
from transformers import TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from pipeline.check import ds_json, ds_recipe
from pipeline.check.compose import compose_point
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.plan import settings
from pipeline.sweep.info import point_name

from helpers import ROOT, assert_carries, cli_env, ok, run_pipeline

IMPORT = [sys.executable, "-m", "pipeline.import"]
DATA = Path(__file__).parent / "ds_json"
GOLDEN = sorted(p.name for p in DATA.glob("*.json") if "broken" not in p.name)
# What DeepSpeed's parser must read alike from the file and from the plan.
READ_ALIKE = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "float16_config",
    "bfloat16_config",
    "zero_optimization_stage",
    "optimizer_name",
    "optimizer_params",
    "scheduler_name",
    "scheduler_params",
)


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An outputs dir whose conf/ Hydra searches, as the command line names it (recipes.py reads argv)."""
    out = tmp_path / "outputs"
    monkeypatch.setattr(sys, "argv", ["pipeline", f"outputs_dir={out}"])
    return out


def composed(out: Path, *overrides: str) -> Config:
    return compose_point(ds_recipe.expand([f"outputs_dir={out}", *overrides]))


def plan_of(cfg: Config) -> dict:
    return settings.deepspeed_config(cfg, hidden=cfg.model.hidden_size)


def resolved_by_hf(source: dict, cfg: Config, ds: dict) -> dict:
    """The file with its "auto"s filled by HF's Trainer code from the plan's TrainingArguments (it raises
    where a value of the file mismatches them)."""
    kwargs = settings.training_args(cfg, ds, Path("/tmp/unused"), use_cpu=True)
    kwargs.update(deepspeed=None, fp16=False)  # TrainingArguments refuses fp16 on CPU
    args = TrainingArguments(**kwargs)
    hf = HfTrainerDeepSpeedConfig(copy.deepcopy(source))
    hf.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=cfg.model.hidden_size))
    hf.trainer_config_finalize(args, model, cfg.trainer.max_steps)
    config = hf.config
    for key in ds_json.DECIDED:
        config.pop(key, None)
    zero = config.get("zero_optimization", {})
    if "aio" in zero:  # the guide nests it; DeepSpeed 0.19 reads it on top (README: One source of truth)
        config["aio"] = zero.pop("aio")
    for section in ("offload_optimizer", "offload_param"):  # device none: nothing to plan
        if zero.get(section, {}).get("device") == "none":
            zero.pop(section)
    return config


def stage_keys(stage: int) -> set[str]:
    """The ZeRO keys the plan writes at a stage (DeepSpeed acts on no other: reduce_scatter is ZeRO-1/2's)."""
    return set(settings.zero_section(compose_point([f"zero=stage{stage}", "offload=none"]), 64))


def not_at_this_stage(want: dict, cfg: Config) -> dict:
    """The file's zero group keys that its stage has no use for: the group takes them (checked), the
    plan leaves them out."""
    zero = want.get("zero_optimization", {})
    unused = {
        k for k in zero if hasattr(cfg.zero, k) and k not in stage_keys(cfg.zero.stage) and k != "stage"
    }
    for key in unused:
        assert getattr(cfg.zero, key) == zero.pop(key), key
    return want


def deepspeed_reads(ds: dict) -> dict:
    """What DeepSpeed's parser reads; a scheduler's params as its class gets them (its defaults filled)."""
    parsed = DeepSpeedConfig(copy.deepcopy(ds))
    read = {key: getattr(parsed, key) for key in READ_ALIKE}
    if parsed.scheduler_name:
        takes = inspect.signature(getattr(lr_schedules, parsed.scheduler_name)).parameters
        defaults = {k: p.default for k, p in takes.items() if p.default is not inspect.Parameter.empty}
        read["scheduler_params"] = defaults | parsed.scheduler_params
    return read


@pytest.mark.parametrize("name", GOLDEN)
def test_the_plan_is_the_file_with_its_autos_resolved(name: str, recipes: Path):
    cfg = composed(recipes, f"deepspeed_config={DATA / name}")
    ds = plan_of(cfg)
    source = json.loads((DATA / name).read_text())
    want = not_at_this_stage(resolved_by_hf(source, cfg, ds), cfg)
    assert "auto" not in json.dumps(ds)
    assert_carries(want, ds)
    batch = {k: ds[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")}
    assert deepspeed_reads(ds) == deepspeed_reads({**batch, **want})


def test_every_json_example_of_the_guide_is_here():
    guide = Path("/work/shared/seed/deepspeed-guide.md")
    if not guide.exists():
        pytest.skip("the guide is not on this machine")
    blocks = guide.read_text().split("```yml\n")[1:]
    examples = sorted(b.split("```")[0] for b in blocks if b.lstrip().startswith("{"))
    assert examples == sorted(p.read_text() for p in DATA.glob("guide_*.json"))


def test_the_command_line_wins_and_says_so(recipes: Path, capsys: pytest.CaptureFixture):
    cfg = composed(
        recipes, f"deepspeed_config={DATA / 'dse_zero2_profilers.json'}", "trainer.max_steps=4", "zero=stage1"
    )
    notes = capsys.readouterr().err
    assert "scheduler.params.total_num_steps gives way to the command line's trainer.max_steps=4" in notes
    assert "zero_optimization.stage gives way to the command line's zero=stage1" in notes
    ds = plan_of(cfg)
    assert ds["scheduler"]["params"]["total_num_steps"] == 4 and ds["zero_optimization"]["stage"] == 1
    assert ds["flops_profiler"]["profile_step"] == 2  # the rest of the file stays
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 2


def test_a_recipe_stands_alone_as_its_own_overrides(recipes: Path):
    """A search's winner inlines the file's recipe (driver._crown): the same config either way."""
    for name in GOLDEN:
        named = ds_recipe.expand([f"outputs_dir={recipes}", f"deepspeed_config={DATA / name}"])
        inline = ds_recipe.inlined(named, str(recipes))
        assert not any(o.startswith("+deepspeed_config") for o in inline)
        assert compose_point(named) == compose_point(inline), name


def test_a_changed_file_gets_a_recipe_of_its_own(recipes: Path, tmp_path: Path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    where = f"outputs_dir={recipes}"
    first = ds_recipe.expand([where, f"deepspeed_config={ds}"])
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    second = ds_recipe.expand([where, f"deepspeed_config={ds}"])
    assert first[1] == "+deepspeed_config=ds" and second[1].startswith("+deepspeed_config=ds-")
    assert compose_point(first).zero.stage == 2 and compose_point(second).zero.stage == 3


def test_a_run_is_named_by_the_file():
    assert point_name(["+deepspeed_config=ds_config", "trainer.max_steps=4"], []) == (
        "deepspeed_config=ds_config,trainer.max_steps=4"
    )
    assert point_name(["+deepspeed_config=a", "zero=stage2"], ["+deepspeed_config"]) == "deepspeed_config=a"


BAD = {
    "not JSON": (
        (DATA / "guide_zero2_broken.json").read_text(),
        "deepspeed_config=bad.json: not valid JSON: Expecting ',' delimiter at line 14 column 9",
    ),
    "top-level typo": (
        '{"gradient_clipings": 1.0}',
        "bad.json: gradient_clipings: DeepSpeed has no such key (it would ignore it). "
        "Fix: did you mean gradient_clipping?",
    ),
    "zero typo": (
        '{"zero_optimization": {"stage": 2, "overlap_com": true}}',
        "bad.json: zero_optimization.overlap_com: DeepSpeed has no such key (it would ignore it). "
        "Fix: did you mean zero_optimization.overlap_comm?",
    ),
    "nested pass-through typo": (
        '{"activation_checkpointing": {"cpu_checkpointin": true}}',
        "did you mean activation_checkpointing.cpu_checkpointing?",
    ),
    "wrong type": (
        '{"zero_optimization": {"stage": 2, "overlap_comm": "sometimes"}}',
        "bad.json: zero_optimization.overlap_comm: Value 'sometimes' is not a valid bool",
    ),
    "no group key": (
        '{"optimizer": {"type": "Adam", "params": {"lr": 1e-4, "torch_adam": true}}}',
        "bad.json: optimizer.params.torch_adam: no config group takes it",
    ),
    "two dtypes": ('{"fp16": {"enabled": true}, "bf16": {"enabled": true}}', "fp16 and bf16 are both on"),
    "stage": ('{"zero_optimization": {"stage": 4}}', "ZeRO has stages 0-3, not 4"),
    "warmup to another lr": (
        '{"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},'
        ' "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 3e-4}}}',
        "bad.json: scheduler.params.warmup_max_lr: 0.0003 is not optimizer.params.lr 0.0001",
    ),
    "batch for other ranks": (
        '{"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8}',
        "bad.json: train_batch_size: 64 is not train_micro_batch_size_per_gpu x gradient_accumulation_steps"
        " x ranks (32). Fix: set trainer.nproc_per_node",
    ),
    "auto where HF fills none": (
        '{"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}',
        'bad.json: zero_optimization.sub_group_size: "auto" is filled only for the sizes HF derives',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_what_cannot_be_represented_is_named_by_its_json_key(case: str, recipes: Path, tmp_path: Path):
    text, words = BAD[case]
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ConfigError) as refused:
        ds_recipe.expand([f"outputs_dir={recipes}", f"deepspeed_config={tmp_path / 'bad.json'}"])
    assert words in str(refused.value)
    assert not (recipes / "conf").exists()  # nothing written for a file refused


def test_the_ranks_it_was_written_for_make_its_batch(recipes: Path, tmp_path: Path):
    (tmp_path / "ds.json").write_text(
        '{"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8}'
    )
    cfg = composed(recipes, f"deepspeed_config={tmp_path / 'ds.json'}", "trainer.nproc_per_node=2")
    assert cfg.global_batch == 64


@pytest.mark.slow
def test_refused_in_one_line_before_anything_starts(outputs: Path, tmp_path: Path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2, "overlap_com": true}}')
    for args in ([], ["search=fastest"]):
        result = run_pipeline(outputs, f"deepspeed_config={tmp_path / 'ds.json'}", *args)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == (
            "error: ds.json: zero_optimization.overlap_com: DeepSpeed has no such key (it would ignore it)."
            " Fix: did you mean zero_optimization.overlap_comm?"
        )
        assert not outputs.exists()


@pytest.mark.slow
def test_a_dry_sweep_over_two_files(outputs: Path):
    files = ",".join(str(DATA / n) for n in ("guide_zero3.json", "dse_zero2_profilers.json"))
    result = ok(run_pipeline(outputs, "-m", f"deepspeed_config={files}", "dry_run=true"))
    assert "dry sweep: 2 points" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("deepspeed_config=")]
    assert rows == ["deepspeed_config=guide_zero3", "deepspeed_config=dse_zero2_profilers"]


@pytest.mark.slow
def test_imported_as_a_recipe_it_plans_alike(outputs: Path, recipes: Path):
    """`python -m pipeline.import` writes conf/experiment/<name>.yaml (here under the outputs dir's
    conf/, which Hydra searches too); experiment=<name> composes what deepspeed_config= composes."""
    source = DATA / "dse_zero3_actckpt.json"
    folder = recipes / "conf" / "experiment"
    args = [str(source), "--name", "my_ds", "--dir", str(folder)]
    done = ok(subprocess.run(IMPORT + args, cwd=ROOT, env=cli_env(), capture_output=True, text=True))
    assert "python -m pipeline experiment=my_ds" in done.stdout
    again = subprocess.run(IMPORT + args, cwd=ROOT, env=cli_env(), capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: --name: ") and "exists" in again.stderr
    as_recipe = compose_point([f"outputs_dir={recipes}", "experiment=my_ds"])
    assert as_recipe == composed(recipes, f"deepspeed_config={source}")


@pytest.mark.slow
def test_a_deepspeedexamples_config_trains_and_deepspeed_acts_on_it(outputs: Path):
    """The one training run: ZeRO-2 + CPU offload, DeepSpeed's Adam and WarmupDecayLR from the file,
    its profilers on, and the command line's steps."""
    source = DATA / "dse_zero2_profilers.json"
    result = ok(run_pipeline(outputs, f"deepspeed_config={source}", "trainer.max_steps=3"))
    (planned,) = outputs.glob("runs/*/deepspeed.json")
    ds = json.loads(planned.read_text())
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95] and ds["gradient_clipping"] == 0.5
    printed = result.stdout + result.stderr
    assert "DeepSpeed Flops Profiler" in printed  # flops_profiler at profile_step 2
    assert "time (ms) | fwd_microstep:" in printed  # wall_clock_breakdown
    assert "== deepspeed_config=dse_zero2_profilers,trainer.max_steps=3: done ==" in printed
