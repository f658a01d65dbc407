"""Every combination of the groups composes; the guide's rules accept and refuse the right ones;
the DeepSpeed dict is one DeepSpeed accepts and HF's mismatch check passes; golden checks
against the guide's two example configs."""

import copy
import dataclasses
import inspect
import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import deepspeed.runtime.constants as ds_constants
import deepspeed.runtime.swap_tensor.constants as ds_swap_constants
import deepspeed.runtime.zero.config as ds_zero_config
import pytest
import torch
import yaml
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
from omegaconf import OmegaConf
from transformers import TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from pipeline.check import gate, rules
from pipeline.check.compose import compose_point
from pipeline.config import Config, SchedulerConf, WarmupType
from pipeline.errors import ConfigError
from pipeline.plan import settings

from helpers import ROOT, assert_carries, ok, run_pipeline

GROUPS = ["zero", "offload", "precision", "optimizer", "scheduler"]
OPTIONS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in GROUPS}
DS_TOP_LEVEL = {
    v
    for m in (ds_constants, ds_zero_config, ds_swap_constants)
    for k, v in vars(m).items()
    if k.isupper() and isinstance(v, str)
}
GOLDEN = Path(__file__).parent / "golden"


def expected_error(zero: str, offload: str, optimizer: str) -> str:
    """The guide's rules, written independently of pipeline/check/rules.py: the key each breaks."""
    stage = int(zero[-1])
    if offload != "none" and stage == 0:
        return "offload.device"
    if offload == "nvme" and stage != 3:
        return "offload.device"
    if offload != "none" and optimizer == "lamb":
        return "optimizer"
    if optimizer == "muon" and stage == 3:  # DeepSpeed's Muon: no reduce-scatter on ZeRO-3
        return "zero.reduce_scatter"
    return ""


def all_points():
    """Each group option composed by Hydra once, then every combination assembled from them
    (the groups are independent; test_assembly_equals_hydras_own_composition checks that)."""
    base = compose_point([])
    nodes = {(g, o): getattr(compose_point([f"{g}={o}"]), g) for g in GROUPS for o in OPTIONS[g]}
    for combo in itertools.product(*(OPTIONS[g] for g in GROUPS)):
        yield (
            combo,
            dataclasses.replace(base, **{g: nodes[(g, o)] for g, o in zip(GROUPS, combo, strict=True)}),
        )


def test_assembly_equals_hydras_own_composition():
    combos = dict(all_points())
    picked = list(combos)[::97]
    for combo in picked:
        real = compose_point([f"{g}={o}" for g, o in zip(GROUPS, combo, strict=True)])
        assert real == combos[combo], combo
    assert len(combos) == len(list(itertools.product(*OPTIONS.values()))) and len(picked) >= 15


def test_groups_have_the_guides_options():
    assert OPTIONS["zero"] == ["stage0", "stage1", "stage2", "stage3"]
    assert OPTIONS["offload"] == ["cpu", "none", "nvme"]
    assert OPTIONS["precision"] == ["bf16", "fp16", "fp32", "fp8"]
    assert {"adamw", "adam", "lamb", "adamw_torch"} <= set(OPTIONS["optimizer"])
    assert {"warmup_linear", "warmup_cosine", "warmup_decay", "constant"} <= set(OPTIONS["scheduler"])
    assert {"warmup", "one_cycle", "lr_range_test"} <= set(OPTIONS["scheduler"])


def test_deepspeed_names_are_the_ones_deepspeed_knows():
    """rules.py keeps its own lists (no DeepSpeed import while a sweep is checked): they must stay
    within DeepSpeed's, or a name would pass the check and fail once the ranks have started."""
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES, WARMUP_LINEAR_RATE, WARMUP_LOG_RATE

    assert {name.lower() for name in rules.DS_OPTIMIZERS} <= set(DEEPSPEED_OPTIMIZERS)
    assert not rules.ONE_BIT & set(DEEPSPEED_OPTIMIZERS)
    assert rules.DS_SCHEDULERS == set(VALID_LR_SCHEDULES)
    assert {t.value for t in WarmupType} == {WARMUP_LOG_RATE, WARMUP_LINEAR_RATE}
    assert set(rules.SCHEDULER_KEYS) == rules.DS_SCHEDULERS


def _deepspeed_scheduler(name: str) -> type:
    from deepspeed.runtime import lr_schedules

    return getattr(lr_schedules, name)


def _defaults(scheduler: type) -> dict:
    """The keyword defaults of a DeepSpeed scheduler class: what a JSON that leaves a key out gets."""
    return {
        key: p.default
        for key, p in inspect.signature(scheduler).parameters.items()
        if p.default is not inspect.Parameter.empty and key != "last_batch_iteration"
    }


def test_every_deepspeed_scheduler_gets_its_own_keys_and_deepspeed_builds_it():
    """One option per DeepSpeed scheduler; the plan sends each only keys its class takes (the engine
    passes them as keyword arguments: another is a TypeError in the ranks, as OneCycle and LRRangeTest
    once got warmup keys), and the class builds and steps on them as the engine would."""
    planned = {}
    for option in OPTIONS["scheduler"]:
        cfg = compose_point([f"scheduler={option}"])
        if cfg.scheduler.provider.value == "deepspeed":
            planned[option] = settings.scheduler_section(cfg)
    assert {s["type"] for s in planned.values()} == rules.DS_SCHEDULERS and len(planned) == 5
    for option, section in planned.items():
        scheduler = _deepspeed_scheduler(section["type"])
        takes = set(inspect.signature(scheduler).parameters)
        assert set(section["params"]) <= takes, (option, set(section["params"]) - takes)
        assert set(SchedulerConf.__dataclass_fields__) & takes <= set(section["params"]) | {
            "cycle_second_step_size",  # None: DeepSpeed's own (as the first)
            "cycle_second_stair_count",
        }, option
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        built = scheduler(optimizer, **section["params"])
        built.step()
        assert 0 <= built.get_last_lr()[0] <= 3e-4 * 2, option


def test_scheduler_defaults_are_deepspeeds():
    """Where the schema keeps DeepSpeed's default it is DeepSpeed's own; the exceptions are config.py's
    Nones (drawn from optimizer.lr and trainer.max_steps) and cycle_momentum (off: it sets beta2)."""
    ours = dataclasses.asdict(SchedulerConf()) | {"warmup_type": SchedulerConf().warmup_type.value}
    chosen = {key for key, value in ours.items() if value is None} | {"cycle_momentum"}
    for name in sorted(rules.DS_SCHEDULERS):
        for key, default in _defaults(_deepspeed_scheduler(name)).items():
            if key in ours and key not in chosen:
                assert ours[key] == default, (name, key)


def test_the_guides_example_warms_up_as_its_json_does():
    """experiment=zero3_nvme is the guide's ZeRO-Infinity example: its WarmupLR gets what DeepSpeed gives
    the guide's JSON, HF's "auto"s filled and DeepSpeed's defaults for the rest (log warmup, not linear)."""
    guide = _resolve_guide(json.loads((GOLDEN / "guide_zero3_infinity.json").read_text()), {})["scheduler"]
    ours = settings.scheduler_section(compose_point(["experiment=zero3_nvme"]))
    assert ours == {
        "type": guide["type"],
        "params": _defaults(_deepspeed_scheduler(guide["type"])) | guide["params"],
    }


def test_sizes_written_as_the_guide_writes_them(tmp_path, monkeypatch):
    """5e8 for an integer key is the integer 500000000, on the command line and in a recipe; 5.5 is not
    a whole number: one line naming the key."""
    cfg = compose_point(["zero.reduce_bucket_size=5e8", "trainer.max_steps=4.0"])
    assert (cfg.zero.reduce_bucket_size, cfg.trainer.max_steps) == (500_000_000, 4)
    planned = settings.deepspeed_config(cfg, hidden=128)["zero_optimization"]["reduce_bucket_size"]
    assert type(planned) is int and planned == 500_000_000
    recipes = tmp_path / "conf" / "experiment"
    recipes.mkdir(parents=True)
    (recipes / "guide_sizes.yaml").write_text(
        "# @package _global_\nzero:\n  stage: 3\n  stage3_max_live_parameters: 1e9\n  sub_group_size: 1e9\n"
    )
    monkeypatch.setattr(sys, "argv", ["pipeline", f"outputs_dir={tmp_path}"])  # where Hydra finds recipes
    cfg = compose_point(["experiment=guide_sizes", f"outputs_dir={tmp_path}"])
    assert (cfg.zero.stage3_max_live_parameters, cfg.zero.sub_group_size) == (10**9, 10**9)
    assert type(cfg.zero.sub_group_size) is int
    for value in ("5.5e0", "inf"):
        with pytest.raises(
            ConfigError, match=r"^zero.reduce_bucket_size: .* is not a whole number\. Fix: write"
        ):
            compose_point([f"zero.reduce_bucket_size={value}"])


def test_what_deepspeed_refuses_is_refused_before_start():
    """DeepSpeed's own config models run on the planned dict (a backstop behind the range checks)."""
    ok_dict = {"zero_optimization": {"stage": 2}, "fp16": {"enabled": False}, "bf16": {"enabled": True}}
    gate.deepspeed_accepts(ok_dict)
    with pytest.raises(ConfigError, match=r"^zero: DeepSpeed refuses zero_optimization.reduce_bucket_size"):
        gate.deepspeed_accepts({**ok_dict, "zero_optimization": {"stage": 2, "reduce_bucket_size": -5}})


def test_options_state_only_what_differs_from_the_schema():
    """Defaults live once, in pipeline/config.py: an option that restates one would silently keep
    the old value when the schema's default changes."""
    restated = []
    for path in sorted((ROOT / "conf").glob("*/*.yaml")):
        group = path.parent.name
        if group in ("experiment", "launcher"):  # recipes; slurm.yaml sets Hydra's launcher node
            continue
        values = yaml.safe_load(path.read_text()) or {}
        if not path.read_text().startswith("# @package _global_"):
            values = {group: values}  # perf/ presets set keys of other groups (trainer, zero)
        for node, keys in values.items():
            schema = getattr(Config(), node) or _optional_group(node)
            defaults = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
            restated += [f"{group}/{path.stem}: {node}.{k}" for k, v in keys.items() if defaults[k] == v]
    assert restated == []


def _optional_group(node: str) -> object:
    """The schema of a group that is off by default (search: None), with its defaults."""
    (kind,) = [f.type for f in dataclasses.fields(Config) if f.name == node]
    return kind.__args__[0]()


def test_every_combination_composes_and_only_the_guides_rules_refuse():
    seen_valid = seen_invalid = 0
    for (zero, offload, precision, optimizer, scheduler), cfg in all_points():
        want = expected_error(zero, offload, optimizer)
        try:
            rules.check(cfg)
            got = ""
        except ConfigError as e:
            got = e.key
        assert got == want, (
            f"{zero} {offload} {precision} {optimizer} {scheduler}: refused by {got!r}, expected {want!r}"
        )
        if want:
            seen_invalid += 1
            continue
        seen_valid += 1
        ds = settings.deepspeed_config(cfg, hidden=128)
        # DeepSpeed ignores unknown top-level keys silently: every key we write must be one it reads.
        assert set(ds) <= DS_TOP_LEVEL, set(ds) - DS_TOP_LEVEL
        DeepSpeedZeroConfig(**ds["zero_optimization"])  # its pydantic model forbids unknown keys
        # fp8 is bf16 outside the linear layers (torchao swaps them in the rank).
        assert ds["fp16"]["enabled"] == (precision == "fp16") and ds["bf16"]["enabled"] == (
            precision in ("bf16", "fp8")
        )
        assert ("optimizer" in ds) == (cfg.optimizer.provider.value == "deepspeed")
        assert ("scheduler" in ds) == (cfg.scheduler.provider.value == "deepspeed")
        assert ("offload_param" in ds["zero_optimization"]) == (offload != "none" and zero == "stage3")
    assert seen_valid > 500 and seen_invalid > 100


def test_zero1_is_the_guides_zero1_as_deepspeed_reads_it():
    """The guide writes ZeRO-1 as {"stage": 1}: whatever else we spell out must be DeepSpeed's own
    default for it (ZeRO-2/3's overlap and hidden^2 reduce bucket cost ZeRO-1 ~20% of a 1B step)."""
    cfg = compose_point(["zero=stage1"])
    ds = settings.deepspeed_config(cfg, hidden=2048)
    assert DeepSpeedZeroConfig(**ds["zero_optimization"]) == DeepSpeedZeroConfig(stage=1)


@pytest.mark.parametrize(
    ("overrides", "torch_adam"),
    [([], True), (["optimizer=adam"], True), (["optimizer=muon"], True), (["offload=cpu"], False)],
)
def test_without_a_gpu_deepspeeds_adam_steps_with_torchs(overrides: list[str], torch_adam: bool):
    """Without a GPU, DeepSpeed's FusedAdam is a CPU op compiled on first use (~1.5 min of one core);
    torch's AdamW takes the same step. Offloaded, DeepSpeedCPUAdam steps, as on a GPU machine."""
    cfg = compose_point(overrides)
    assert settings.deepspeed_config(cfg, 128, use_cpu=True)["optimizer"]["params"].get("torch_adam") == (
        torch_adam or None
    )
    assert "torch_adam" not in settings.deepspeed_config(cfg, 128, use_cpu=False)["optimizer"]["params"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["zero=stage2", "offload=cpu", "optimizer=adamw_torch", "scheduler=warmup_linear", "precision=bf16"],
        ["zero=stage3", "offload=nvme", "scheduler=warmup_cosine", "trainer.gradient_accumulation_steps=4"],
        ["zero=stage1", "scheduler=warmup", "optimizer.weight_decay=0.1", "trainer.max_grad_norm=0.5"],
        ["zero=stage3", "precision=fp16", "optimizer=adam", "trainer.micro_batch_size=3"],
    ],
)
def test_hf_finds_nothing_to_correct(overrides):
    """HF's own check ('Please correct the following DeepSpeed config values that mismatch
    TrainingArguments') over our dict and our TrainingArguments: one source, so no mismatch."""
    cfg = compose_point(overrides)
    ds = settings.deepspeed_config(cfg, hidden=cfg.model.hidden_size)
    kwargs = settings.training_args(cfg, ds, Path("/tmp/unused"), use_cpu=True)
    kwargs.update(deepspeed=None, fp16=False)  # TrainingArguments refuses fp16 on CPU; compare the flag below
    args = TrainingArguments(**kwargs)
    hf = HfTrainerDeepSpeedConfig(copy.deepcopy(ds))
    hf.trainer_config_process(args)
    hf.mismatches = [m for m in hf.mismatches if "fp16" not in m]
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=cfg.model.hidden_size))
    hf.trainer_config_finalize(args, model, cfg.trainer.max_steps)  # raises on any mismatch
    assert hf.config == ds  # nothing was left "auto" for HF to fill
    assert ds["fp16"]["enabled"] == cfg.precision.fp16


def _dry_run(outputs: Path, *overrides: str) -> dict:
    result = ok(run_pipeline(outputs, "dry_run=true", *overrides))
    assert "dry run: nothing trained" in result.stdout
    written = sorted(outputs.glob("runs/*/deepspeed.json"))
    assert len(written) == 1
    ds = json.loads(written[0].read_text())
    assert json.dumps(ds, indent=2) in result.stdout  # printed as written
    return ds


def _resolve_guide(guide: dict, ours: dict) -> dict:
    """The guide's example with HF's "auto" filled as the Trainer would for our settings."""
    hidden = 128
    guide = copy.deepcopy(guide)
    args = TrainingArguments(
        output_dir="/tmp/unused",
        use_cpu=True,
        per_device_train_batch_size=8,
        max_steps=30,
        learning_rate=3e-4,
        warmup_steps=2,
        max_grad_norm=1.0,
        report_to=[],
    )
    hf = HfTrainerDeepSpeedConfig(guide)
    hf.trainer_config_process(args)
    hf.mismatches.clear()
    hf.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden)), 30)
    return hf.config


@pytest.mark.slow
def test_zero2_cpu_offload_carries_the_guides_zero2_example(outputs):
    ds = _dry_run(outputs, "zero=stage2", "offload=cpu")
    assert_carries(json.loads((GOLDEN / "guide_zero2_offload.json").read_text()), ds)


@pytest.mark.slow
def test_zero3_nvme_carries_the_guides_infinity_example_resolved(outputs, tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    # Sizes as the guide writes them (1e9): whole numbers, integers also in Hydra's own compose of the job.
    sizes = [
        "zero.sub_group_size=1e9",
        "zero.stage3_max_live_parameters=1e9",
        "offload.param_buffer_size=1e8",
    ]
    ds = _dry_run(outputs, "experiment=zero3_nvme", f"offload.nvme_path={nvme}", *sizes)
    assert type(ds["zero_optimization"]["offload_param"]["buffer_size"]) is int
    guide = json.loads((GOLDEN / "guide_zero3_infinity.json").read_text())
    # The guide nests "aio" in zero_optimization, where DeepSpeed 0.19 refuses it; it is top-level.
    guide["aio"] = guide["zero_optimization"].pop("aio")
    for section in ("offload_optimizer", "offload_param"):
        guide["zero_optimization"][section]["nvme_path"] = str(nvme)
    resolved = _resolve_guide(guide, ds)
    assert "auto" not in json.dumps(ds)
    assert_carries(resolved, ds)
    with pytest.raises(Exception, match="aio"):
        DeepSpeedZeroConfig(
            **json.loads((GOLDEN / "guide_zero3_infinity.json").read_text())["zero_optimization"]
        )


def test_a_run_is_named_by_what_it_trains_with_each_path_by_its_last_part():
    from pipeline.sweep.info import point_name

    typed = [
        "model=hf",
        "model.name_or_path=/some/long/dir/m1",
        "data=files",
        "data.train_files=[/data/t.jsonl,/data/more/e.csv]",
        "outputs_dir=/scratch/me/outputs",
        "tracking.experiment=mine",
    ]
    short = "model=hf,model.name_or_path=m1,data=files,data.train_files=[t.jsonl,e.csv]"
    assert point_name(typed, []) == short
    assert point_name(["zero=stage2", "data.train_files=/d/a.jsonl"], ["data.train_files"]) == (
        "data.train_files=a.jsonl"
    )
    assert point_name(["outputs_dir=/tmp/o"], []) == "default"


def test_options_zero_plus_plus_and_tf32_land_in_the_plan():
    """qwZ, qgZ and hpZ go into ZeRO-3's zero_optimization as DeepSpeed's own parser reads them; tf32 goes
    to the Trainer (left out when null, so torch's default stands)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = compose_point(
        [
            "zero=stage3",
            "zero.zero_quantized_weights=true",
            "zero.zero_quantized_gradients=true",
            "zero.zero_hpz_partition_size=2",
            "trainer.nproc_per_node=2",
            "precision.tf32=false",
        ]
    )
    rules.check(cfg)
    ds = settings.deepspeed_config(cfg, hidden=cfg.model.hidden_size)
    zero = ds["zero_optimization"]
    assert (zero["zero_quantized_weights"], zero["zero_quantized_gradients"]) == (True, True)
    assert zero["zero_hpz_partition_size"] == 2
    parsed = DeepSpeedConfig(ds | {"train_batch_size": ds["train_micro_batch_size_per_gpu"]}).zero_config
    assert (parsed.zero_quantized_weights, parsed.zero_quantized_gradients) == (True, True)
    assert parsed.zero_hpz_partition_size == 2
    assert settings.training_args(cfg, ds, Path("/tmp/unused"), use_cpu=True)["tf32"] is False
    plain = compose_point(["zero=stage2"])
    plain_ds = settings.deepspeed_config(plain, hidden=plain.model.hidden_size)
    assert "zero_quantized_weights" not in plain_ds["zero_optimization"]
    assert "tf32" not in settings.training_args(plain, plain_ds, Path("/tmp/unused"), use_cpu=True)
