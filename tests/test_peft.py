"""LoRA (peft=lora, the peft library) on a tiny Llama built from its config (byte-level tokenizer) and
a tiny GPT-2 loaded as the user's own model (its BPE tokenizer), with real DeepSpeed and MLflow: the
same losses on ZeRO-2 and ZeRO-3 + CPU offload, a resume from a checkpoint that goes on as the
uninterrupted run, the adapter saved whole under ZeRO-3 and loaded again on its base, the merged
model; the plan and the rules that know LoRA and QLoRA; bad input refused before anything starts."""

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline import generate, plan
from pipeline.check import compose, fit, rules
from pipeline.errors import ConfigError
from pipeline.rank import adapter
from pipeline.sweep.search import trial

from helpers import Own, mlflow_client, ok, rank_model, run_pipeline, runs

# Four steps with a checkpoint at step 2. The test hook stops rank 0 at step 3: a point watched for hangs
# (trainer.hang_timeout_s=6, above a step's time on 2 busy cores) fails its first try holding
# checkpoint-2, and the sweep's rerun carries it on; the same point unwatched (0) trains through.
LORA = ("peft=lora", "trainer.max_steps=4", "trainer.save_steps=2", "trainer.merge_adapter=true")
HANG_AT_3 = {"ZEROSWEEP_TEST_HANG_AT_STEP": "0:3"}
# The stages' and the resumed curves agree to float32 rounding (the full fine-tune's tests: ~5e-7).
TOLERANCE = 1e-4
# llama_tiny: 2 layers x 7 linear layers (q k v o gate up down), an A and a B each.
LLAMA_ADAPTER_TENSORS = 2 * 7 * 2


def losses(outputs: Path, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow_client(outputs).get_metric_history(run_id, "loss")}


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """LoRA on llama_tiny, ZeRO-2 and ZeRO-3, both with CPU offload, as one sweep: each uninterrupted,
    and each stopped at step 3, then carried on from checkpoint-2 by the sweep's rerun."""
    out = tmp_path_factory.mktemp("lora") / "outputs"
    sweep = ("-m", *LORA, "zero=stage2,stage3", "offload=cpu", "trainer.hang_timeout_s=0,6")
    first = run_pipeline(out, *sweep, env=HANG_AT_3)
    assert first.returncode == 1 and first.stderr.count("FAILED: Hung") == 2, first.stderr[-3000:]
    (sweep_dir,) = out.glob("sweeps/*")
    ok(run_pipeline(out, *sweep, f"sweep.resume={sweep_dir}"))
    points = [r for r in runs(out) if "mlflow.parentRunId" in r.data.tags]
    assert len(points) == 6  # 4 points, the 2 stopped ones tried twice

    def pick(timeout: str, carries_on: bool) -> dict:
        return {
            r.data.params["zero"]: r
            for r in points
            if r.data.params["trainer.hang_timeout_s"] == timeout
            and ("zerosweep.carries_on" in r.data.tags) == carries_on
        }

    return {
        "uninterrupted": pick("0", False),
        "first": pick("6", False),
        "carried": pick("6", True),
        "out": out,
    }


def run_dir(run) -> Path:
    return Path(run.data.tags["zerosweep.output_dir"])


@pytest.mark.slow
def test_lora_losses_agree_across_stages_and_a_resumed_point_goes_on_as_the_uninterrupted_one(lora):
    out = lora["out"]
    expected = losses(out, lora["uninterrupted"]["stage2"].info.run_id)
    assert sorted(expected) == [1, 2, 3, 4] and expected[4] != expected[1]
    for stage in ("stage2", "stage3"):
        first, carried = lora["first"][stage], lora["carried"][stage]
        assert lora["uninterrupted"][stage].info.status == "FINISHED"
        assert first.info.status == "FAILED" and carried.info.status == "FINISHED"
        before, after = losses(out, first.info.run_id), losses(out, carried.info.run_id)
        assert carried.data.metrics["resumed_from_step"] == 2 and sorted(after) == [3, 4]
        curves = {**before, **after}, losses(out, lora["uninterrupted"][stage].info.run_id)
        for curve in curves:
            for step, loss in curve.items():
                assert loss == pytest.approx(expected[step], abs=TOLERANCE), f"{stage} step {step}"


@pytest.mark.slow
def test_the_zero3_adapter_is_saved_whole_and_loads_on_its_base(lora):
    """Under ZeRO-3 the adapter's 16-bit weights are gathered from the partitions (the trap: saved
    empty): every A and B is there, B has left its init (zeros), and it equals ZeRO-2's adapter."""
    saved = {}
    for stage in ("stage2", "stage3"):
        run = lora["carried"][stage]
        saved[stage] = load_file(run_dir(run) / "adapter" / "adapter_model.safetensors")
        logged = {a.path for a in mlflow_client(lora["out"]).list_artifacts(run.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in logged
    assert len(saved["stage3"]) == LLAMA_ADAPTER_TENSORS
    assert saved["stage3"].keys() == saved["stage2"].keys()
    for key, weight in saved["stage3"].items():
        assert weight.numel() > 0 and torch.allclose(weight, saved["stage2"][key], atol=1e-5), key
        if "lora_B" in key:
            assert weight.abs().max() > 0, f"{key} is still its init"
    adapter_dir = run_dir(lora["carried"]["stage3"]) / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])  # <run dir>/base
    assert Path(config["base_model_name_or_path"]) == run_dir(lora["carried"]["stage3"]) / "base"
    assert isinstance(PeftModel.from_pretrained(base, adapter_dir), PeftModel)


def test_the_zero3_adapter_trains_in_the_training_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DeepSpeed casts a ZeRO-0/1/2 module to bf16 whole, under ZeRO-3 only what zero.Init made: the
    base. The adapter, made after it, would stay fp32, and PEFT casts each adapted input to it: ZeRO-3 +
    LoRA's forward kept 6.7 GiB more than ZeRO-2's for the 1B (benchmarks/RESULTS.md, sixteenth session).
    The model as a rank builds it, in this process (a world of one, taken down after)."""
    point = ["model=llama_tiny", "peft=lora", "zero=stage3", "precision=bf16"]
    net = rank_model(point, tmp_path, monkeypatch)
    assert {p.dtype for p in net.parameters() if p.requires_grad} == {torch.bfloat16}


@pytest.mark.slow
def test_the_merged_model_gives_the_outputs_of_base_plus_adapter(lora):
    run = run_dir(lora["carried"]["stage3"])
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    with_adapter = adapter.reload(run / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(run / "base").eval()
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [net(input_ids=ids).logits for net in (merged, with_adapter, base)]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    assert not torch.allclose(logits[0], logits[2], atol=1e-5)  # the adapter changed something


@pytest.mark.slow
def test_gpt2_lora_on_zero3_trains_the_layers_named_and_generates_from_the_adapter(
    own: Own, outputs: Path, capsys
):
    """The user's own GPT-2 (Conv1D layers) with its BPE tokenizer, rank 8 on two of its layers, ZeRO-3,
    no merge: the adapter has that rank on those layers and loads on the user's model;
    pipeline.generate reads the adapter run by its id."""
    ok(
        run_pipeline(
            outputs,
            "model=hf",
            f"model.name_or_path={own.gpt2}",
            "data=files",
            f"data.train_files={own.train}",
            "peft=lora",
            "peft.r=8",
            "peft.target_modules=[c_attn,c_fc]",
            "zero=stage3",
            "trainer.max_steps=2",
        )
    )
    (run,) = runs(outputs)
    folder = run_dir(run)
    assert run.info.status == "FINISHED"
    assert not (folder / "model").exists() and not (folder / "base").exists()  # the user's model is the base
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    assert {w.shape[0] for k, w in weights.items() if "lora_A" in k} == {8}
    assert {k.split(".")[-3] for k in weights} == {"c_attn", "c_fc"} and len(weights) == 2 * 2 * 2
    base = AutoModelForCausalLM.from_pretrained(own.gpt2)
    loaded = PeftModel.from_pretrained(base, folder / "adapter")
    assert loaded.peft_config["default"].r == 8
    capsys.readouterr()
    generate.main([run.info.run_id, "Python", "--outputs-dir", str(outputs), "--max-new-tokens", "4"])
    assert capsys.readouterr().out.strip(), "no completion printed"


def test_a_dry_sweep_over_the_rank_plans_each_point(outputs: Path):
    """-m peft.r=8,64: each point composed, checked and planned with its own adapter's size."""
    result = ok(
        run_pipeline(
            outputs, "-m", *ONE_B, "peft=lora", "peft.r=8,64", "launcher.gpu_mem_gib=80", "dry_run=true"
        )
    )
    rows = {
        line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("peft.r=")
    }
    assert set(rows) == {"peft.r=8", "peft.r=64"} and all(row[-1] == "yes" for row in rows.values())
    assert float(rows["peft.r=64"][1]) > float(rows["peft.r=8"][1])  # GiB per GPU


BAD = {
    "a target module the model does not have": (
        ["peft=lora", "peft.target_modules=[q_proj,qkv]"],
        "peft.target_modules",
        "llama has no module named qkv. Fix: use some of its linear layers (down_proj, gate_proj, k_proj,",
    ),
    "a rank of 0": (["peft=lora", "peft.r=0"], "peft.r", "must be at least 1, got 0"),
    "qlora without a GPU": (["peft=qlora"], "peft", "qlora needs a CUDA GPU"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_peft_input_is_refused_before_anything_starts(name: str, outputs: Path):
    """One line naming the key and the fix, exit 2, nothing started or logged."""
    args, key, words = BAD[name]
    result = run_pipeline(outputs, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {key}: ") and words in lines[0], lines[0]
    assert not (outputs / "mlflow.db").exists() and not (outputs / "runs").exists()


def planned(*overrides: str) -> plan.Plan:
    cfg = compose.compose_point(list(overrides))
    rules.check(cfg)
    return plan.make(cfg, Path("unused"), use_cpu=True)


ONE_B = ("model=llama_1b", "data=random_tokens", "precision=bf16", "data.seq_len=1024")


def _model(*overrides: str) -> tuple:
    """A composed config and its model's config (the sizes, no weights)."""
    from pipeline.rank import model

    cfg = compose.compose_point(list(overrides))
    return cfg, model.model_config(cfg, 256)


def test_the_plan_keeps_optimizer_states_for_the_adapter_only_and_the_base_in_16_or_4_bits():
    """The 1B on ZeRO-2 at backward's peak, its first step (no 16-bit gradients yet): the full
    fine-tune's states are 14 bytes a parameter; LoRA's are the frozen base in 16 bits and 14 bytes a
    trainable parameter; QLoRA's base is 4-bit (~0.52 bytes a weight) in its linear layers, the
    embedding and output layer in 16 bits."""
    full, lora, qlora = (planned(*ONE_B, f"peft={p}") for p in ("none", "lora", "qlora"))
    sized = adapter.sizes(*_model(*ONE_B, "peft=qlora"))
    base = full.params
    assert sized.params == base + sized.trainable and lora.params == qlora.params == sized.params
    # r=16 on every linear layer of 16 layers: (in + out) x 16 each.
    per_layer = 4 * (2048 + 2048) + 2 * (2048 + 5504) + (5504 + 2048)
    assert sized.trainable == 16 * 16 * per_layer
    assert full.memory.gpu_model_states == pytest.approx(14 * base, rel=0.01)
    assert lora.memory.gpu_model_states == pytest.approx(2 * base + 14 * sized.trainable, rel=0.01)
    embeddings, norms = 2 * 32000 * 2048, (2 * 16 + 1) * 2048  # embedding and lm_head; RMSNorms
    assert sized.quantized == base - embeddings - norms
    four_bit = qlora.memory.gpu_model_states - 14 * sized.trainable
    assert four_bit == pytest.approx(0.516 * sized.quantized + 2 * (base - sized.quantized), rel=0.01)
    # Offloaded, the adapter's states are next to nothing: the host holds what loading the base takes
    # (memory.load_host_bytes), a quarter of the full fine-tune's offloaded states.
    offloaded = planned(*ONE_B, "peft=lora", "offload=cpu").memory.host_model_states
    assert offloaded == pytest.approx(full.memory.host_model_states, rel=0.02)  # and the adapter
    assert offloaded < 0.3 * planned(*ONE_B, "offload=cpu").memory.host_model_states
    # FLOPs: no weight gradients for the frozen base (4 N + 2 T instead of 6 N, plus attention).
    attention = 12 * 16 * 2048 * 1024
    assert lora.flops_per_token == 4 * lora.params + 2 * sized.trainable + attention


def test_zero3_partitions_the_frozen_base():
    """One GPU gathers nothing (its partition is the base itself). Each of 2 ranks holds half of the
    16-bit base and, at the default reuse distance, gathers it whole (2 bytes a weight); of the adapter,
    half its partitioned states (16 bytes a trainable parameter) and its weights gathered whole
    (memory.ZERO3_GATHERED_BYTES): 2 bytes a weight of the base more, 6 a trainable parameter less."""
    one, two = (planned(*ONE_B, "peft=lora", "zero=stage3", f"trainer.nproc_per_node={n}") for n in (1, 2))
    base = planned(*ONE_B).params
    trainable = one.params - base
    grown = two.memory.gpu_model_states - one.memory.gpu_model_states
    assert grown == pytest.approx(base - 6 * trainable, rel=0.01)


def test_the_fit_check_and_the_search_use_the_lora_plan(capsys):
    """On a 24 GiB GPU the 1B's full fine-tune on ZeRO-2 does not fit, its LoRA does (what the search's
    trials and a sweep's points are held to); LoRA on ZeRO-3 there gets one line suggesting ZeRO-2."""
    gpu = ("launcher.gpu_mem_gib=24",)
    assert "needs ~" in trial.refusal(compose.compose_point([*ONE_B, *gpu, "zero=stage2"]))
    assert trial.refusal(compose.compose_point([*ONE_B, *gpu, "zero=stage2", "peft=lora"])) is None
    cfg = compose.compose_point([*ONE_B, *gpu, "zero=stage3", "peft=lora"])
    assert fit.refusal(cfg, plan.make(cfg, Path("unused"), use_cpu=True).memory, runs_here=True) is None
    (note,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert note.startswith("note: zero: lora on ZeRO-3, but its base fits each GPU under ZeRO-2 as well")
    assert "zero=stage2" in note and f"~{fit.ZERO2_SPEEDUP}x the tokens/s" in note
    small = compose.compose_point([*ONE_B, "launcher.gpu_mem_gib=4", "zero=stage3", "peft=lora"])
    assert fit.zero2_note(small, fit.Capacity.of(small, runs_here=True)) is None  # ZeRO-2 would not fit


def test_qlora_on_zero3_stores_its_4_bits_in_the_compute_dtype():
    """ZeRO-3 partitions and casts parameters of the compute dtype: 4-bit weights packed in uint8 would
    break; bitsandbytes is not imported to plan it."""
    for stage, storage in (("stage2", torch.uint8), ("stage3", torch.bfloat16)):
        cfg = compose.compose_point(["peft=qlora", "precision=bf16", f"zero={stage}"])
        quantization = adapter.quantization(cfg)
        assert quantization.bnb_4bit_quant_storage == storage
        assert quantization.bnb_4bit_compute_dtype == torch.bfloat16 and quantization.load_in_4bit
    assert "bitsandbytes" not in sys.modules


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["peft=qlora", "zero=stage3", "offload=nvme", "offload.nvme_path=/tmp"], "offload.device", "NVMe"),
        (["trainer.merge_adapter=true"], "trainer.merge_adapter", "no adapter to merge"),
        (["peft=lora", "peft.dropout=1.0"], "peft.dropout", "[0, 1)"),
        (["peft=lora", "peft.alpha=0"], "peft.alpha", "above 0"),
        (["peft=qlora", "peft.quant_type=int4"], "peft.quant_type", "nf4 or fp4"),
    ],
)
def test_peft_rules(overrides: list[str], key: str, words: str):
    with pytest.raises(ConfigError) as refused:
        rules.check(compose.compose_point(overrides))
    assert str(refused.value).startswith(f"{key}: ") and words in str(refused.value)
