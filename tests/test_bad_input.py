"""Bad input: one line naming the key and the fix, exit 2, no traceback, no MLflow run, and
nothing already logged is touched."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.rank import corpus
from pipeline.track import store_uri

from helpers import Bad, Own, make_bad, ok, run_pipeline, runs

CASES = {
    "misspelt key": (["zero.stag=3"], "zero.stag", "no such key"),
    "misspelt DeepSpeed key": (
        ["deepspeed.flops_profiler.enabeld=true"],
        "deepspeed.flops_profiler.enabeld",
        "no such key (it would ignore it). Fix: did you mean deepspeed.flops_profiler.enabled?",
    ),
    "DeepSpeed key a group covers": (
        ["deepspeed.gradient_clipping=0.5"],
        "deepspeed.gradient_clipping",
        "a config group sets it. Fix: use trainer.max_grad_norm",
    ),
    "DeepSpeed value DeepSpeed refuses": (
        ["deepspeed.comms_logger.verbose=maybe"],
        "deepspeed",
        "DeepSpeed refuses CommsLoggerConfig.verbose: Input should be a valid boolean",
    ),
    "misspelt top-level key": (["gradient_clipings=1.0"], "gradient_clipings", "no such key"),
    "added key": (["+trainer.foo=1"], "trainer.foo", "no such key"),
    "unknown option": (["zero=stage5"], "zero", "stage0, stage1, stage2, stage3"),
    "wrong type": (["trainer.max_steps=abc"], "trainer.max_steps", "could not be converted"),
    "wrong enum": (["offload.device=gpu"], "offload.device", "expected one of"),
    "nvme without ZeRO-3": (["zero=stage2", "offload=nvme"], "offload.device", "needs ZeRO-3"),
    "param offload without ZeRO-3": (
        ["zero=stage2", "offload=cpu", "offload.params=true"],
        "offload.params",
        "needs ZeRO-3",
    ),
    "offload without ZeRO": (["zero=stage0", "offload=cpu"], "offload.device", "needs ZeRO"),
    "LAMB with optimizer offload": (["optimizer=lamb", "offload=cpu"], "optimizer", "LAMB"),
    "offloaded optimizer without CPU code": (
        ["optimizer=adamw_torch", "optimizer.cpu_impl=false", "offload=cpu"],
        "optimizer",
        "no CPU implementation",
    ),
    "fp16 and bf16": (["precision=fp16", "precision.bf16=true"], "precision.bf16", "use one of dtype"),
    "fp16 on CPU": (["precision=fp16"], "precision", "needs a GPU"),
    "fp8 without an fp8 GPU": (
        ["precision=fp8"],
        "precision",
        "fp8 needs a GPU with float8 matmuls, and no GPU here. Fix: use precision=bf16 here, "
        "precision.fp8_emulate=true to check fp8's numerics",
    ),
    "Liger without a GPU": (["trainer.liger_kernel=true"], "trainer.liger_kernel", "CUDA GPUs only"),
    "Liger on ZeRO-3": (
        ["trainer.liger_kernel=true", "zero=stage3"],
        "trainer.liger_kernel",
        "reads the head's weight outside its forward, where ZeRO-3 has not gathered it",
    ),
    "Liger on GPT-2": (
        ["trainer.liger_kernel=true", "model=gpt2_large"],
        "trainer.liger_kernel",
        "no kernels for a gpt2 model",
    ),
    "1-bit Adam, gone from DeepSpeed 0.19": (
        ["optimizer.name=OneBitAdam"],
        "optimizer.name",
        "no OneBitAdam (its 1-bit optimizers were removed)",
    ),
    "Muon on ZeRO-3 with reduce_scatter": (["optimizer=muon", "zero=stage3"], "zero.reduce_scatter", "Muon"),
    "unknown HF optim": (
        ["optimizer=adamw_torch", "optimizer.name=adamw_turbo"],
        "optimizer.name",
        "adamw_turbo",
    ),
    "zero steps": (["trainer.max_steps=0"], "trainer.max_steps", "at least 1"),
    "zero micro batch over a perf preset's": (
        ["perf=compile_mbs16", "trainer.micro_batch_size=0"],
        "trainer.micro_batch_size",
        "at least 1",
    ),
    "zero sequence length": (["data.seq_len=0"], "data.seq_len", "at least 1"),
    "negative bucket": (["zero.reduce_bucket_size=-5"], "zero.reduce_bucket_size", "at least 1"),
    "lr not a number": (["optimizer.lr=nan"], "optimizer.lr", "finite number above 0"),
    "infinite lr": (["optimizer.lr=inf"], "optimizer.lr", "finite number above 0"),
    "heads that do not divide the width": (
        ["model.hidden_size=30", "model.num_attention_heads=4"],
        "model.hidden_size",
        "multiple of model.num_attention_heads",
    ),
    "sweep without -m": (["zero=stage1,stage2"], "zero", "-m"),
    "missing nvme_path": (
        ["zero=stage3", "offload=nvme", "offload.nvme_path=/nonexistent/nvme"],
        "offload.nvme_path",
        "does not exist",
    ),
    "resident parameters without ZeRO-3": (
        ["perf=resident"],
        "zero.stage3_param_persistence_threshold",
        "zero.stage is 2",
    ),
    "resident and offloaded parameters": (
        ["zero=stage3", "offload=cpu", "perf=resident"],
        "zero.stage3_param_persistence_threshold",
        "offloaded",
    ),
    "a run that does not fit the GPU": (
        ["launcher.gpu_mem_gib=0.015", "zero.reduce_bucket_size=100000"],
        "memory",
        "needs ~33 MiB per GPU, the GPU has 15 MiB. Fix: use ",
    ),
    "more ranks than cores": (["trainer.nproc_per_node=64"], "trainer.nproc_per_node", "64 ranks but"),
    "nodes without a cluster": (
        ["trainer.nnodes=2"],
        "trainer.nnodes",
        "2 nodes, but this trains on this machine only (no -m launcher=slurm). Fix: add -m launcher=slurm",
    ),
    "a group with no option": (["zero="], "zero", "needs an option. Fix: choose one of stage0"),
    "a group set to null": (["zero=null"], "zero", "needs an option, not null"),
    "no tracking server there": (
        ["tracking.uri=http://127.0.0.1:1"],
        "tracking.uri",
        "no MLflow server answers",
    ),
    "no such sweep to carry on in": (
        ["-m", "zero=stage1,stage2", "sweep.resume=/nonexistent"],
        "sweep.resume",
        "neither a sweep dir",
    ),
    "bad point of a sweep": (
        ["-m", "zero=stage2,stage3", "offload=nvme"],
        "offload.device",
        "zero=stage2 offload=nvme",
    ),
    "misspelt warmup type": (
        ["scheduler=warmup", "scheduler.warmup_type=lienar"],
        "scheduler.warmup_type",
        "Invalid value 'lienar', expected one of [log, linear]",
    ),
    "unknown DeepSpeed scheduler": (
        ["scheduler=warmup", "scheduler.name=OneCycleLR"],
        "scheduler.name",
        "no scheduler 'OneCycleLR'. Fix: use one of LRRangeTest, OneCycle, WarmupCosineLR, WarmupDecayLR, "
        "WarmupLR, or scheduler.provider=hf",
    ),
    "OneCycle's bottom above its top": (
        ["scheduler=one_cycle", "scheduler.cycle_min_lr=1e-2", "scheduler.cycle_max_lr=1e-3"],
        "scheduler.cycle_min_lr",
        "the cycle's bottom 0.01 is above its top",
    ),
    "LRRangeTest from a zero lr": (
        ["scheduler=lr_range_test", "scheduler.lr_range_test_min_lr=0"],
        "scheduler.lr_range_test_min_lr",
        "LRRangeTest needs a finite number above 0, got 0.0",
    ),
    "a size that is not a whole number": (
        ["zero.reduce_bucket_size=5.5e0"],
        "zero.reduce_bucket_size",
        "5.5 is not a whole number. Fix: write a whole number",
    ),
    "ZeRO++ qwZ on ZeRO-2": (
        ["zero=stage2", "zero.zero_quantized_weights=true"],
        "zero.zero_quantized_weights",
        "ZeRO++ needs ZeRO-3, but zero.stage is 2. Fix: use zero=stage3",
    ),
    "ZeRO++ hpZ on ZeRO-1": (
        ["zero=stage1", "zero.zero_hpz_partition_size=2"],
        "zero.zero_hpz_partition_size",
        "needs ZeRO-3",
    ),
    "ZeRO++ hpZ that does not divide the ranks per node": (
        ["zero=stage3", "zero.zero_hpz_partition_size=2", "dry_run=true"],
        "zero.zero_hpz_partition_size",
        "2 does not divide the ranks per node (trainer.nproc_per_node=1)",
    ),
    "tf32 without an Ampere GPU": (["precision.tf32=true"], "precision.tf32", "needs an Ampere or newer"),
}


# Your own model and data (model=hf, data=files): refused before any process starts, too.
HF = ("model=hf", "data=files")
OWN_CASES = {
    "model=hf without a model": (lambda o: ["model=hf", "data=random_tokens"], "model.name_or_path", "needs"),
    "data=files without files": (lambda o: ["data=files"], "data.train_files", "needs the training data"),
    "no model at the path": (
        lambda o: [*HF, "model.name_or_path=/nonexistent/m", f"data.train_files={o.train}"],
        "model.name_or_path",
        "no model at /nonexistent/m",
    ),
    "not a causal LM": (
        lambda o: [*HF, f"model.name_or_path={o.not_causal}", f"data.train_files={o.train}"],
        "model.name_or_path",
        "not a causal LM",
    ),
    "no tokenizer": (
        lambda o: [*HF, f"model.name_or_path={o.no_tokenizer}", f"data.train_files={o.train}"],
        "model.name_or_path",
        "no tokenizer",
    ),
    "missing train file": (
        lambda o: [*HF, f"model.name_or_path={o.llama}", "data.train_files=/nonexistent.jsonl"],
        "data.train_files",
        "does not exist",
    ),
    "empty train file": (
        lambda o: [*HF, f"model.name_or_path={o.llama}", f"data.train_files={o.empty}"],
        "data.train_files",
        "is empty",
    ),
    "text_field not a column": (
        lambda o: [
            *HF,
            f"model.name_or_path={o.llama}",
            f"data.train_files={o.train}",
            "data.text_field=body",
        ],
        "data.text_field",
        "'body' is not a column",
    ),
    "seq_len above the model's": (
        lambda o: [*HF, f"model.name_or_path={o.llama}", f"data.train_files={o.train}", "data.seq_len=4096"],
        "data.seq_len",
        "max_position_embeddings (256)",
    ),
    "no prompt/completion fields": (
        lambda o: [
            *HF,
            f"model.name_or_path={o.llama}",
            f"data.train_files={o.train}",
            "data.format=prompt_completion",
        ],
        "data.prompt_field",
        "'prompt'",
    ),
    "sizes of a pretrained model": (
        lambda o: [
            *HF,
            f"model.name_or_path={o.llama}",
            f"data.train_files={o.train}",
            "model.hidden_size=256",
        ],
        "model.hidden_size",
        "own config",
    ),
    "byte corpus with the model's tokenizer": (
        lambda o: ["model=hf", f"model.name_or_path={o.llama}"],
        "data",
        "data=files data.train_files=data/tiny_corpus.txt",
    ),
}


def assert_refused(result: subprocess.CompletedProcess, key: str, words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {key}: "), lines[0]
    assert words in lines[0] and "Fix: " in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("name", CASES)
def test_refused_before_anything_starts(name, outputs):
    args, key, words = CASES[name]
    result = run_pipeline(outputs, *args)
    assert_refused(result, key, words)
    assert not (outputs / "mlflow.db").exists()  # no store, so certainly no run
    assert not (outputs / "runs").exists()


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("reduce_bucket_size: lots", "zero.reduce_bucket_size", "in the recipe experiment/mine. Fix: in the"),
        (
            "reduce_bucket_sze: 5",
            "zero.reduce_bucket_sze",
            "Fix: in the recipe experiment/mine, did you mean zero.reduce_bucket_size?",
        ),
    ],
)
def test_a_bad_value_in_a_users_recipe_names_the_key_and_the_recipe(line, key, words, outputs, tmp_path):
    recipe = tmp_path / "conf" / "experiment" / "mine.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(f"# @package _global_\nzero:\n  {line}\n")
    result = run_pipeline(outputs, "experiment=mine", f"hydra.searchpath=[file://{tmp_path / 'conf'}]")
    assert_refused(result, key, words)


def test_a_recipe_writes_sizes_as_the_guide_does(outputs, tmp_path):
    """5e8, as the guide writes bucket sizes, is the whole number it means."""
    recipe = tmp_path / "experiment" / "mine.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("# @package _global_\nzero:\n  reduce_bucket_size: 5e8\n")
    result = ok(
        run_pipeline(outputs, "experiment=mine", f"hydra.searchpath=[file://{tmp_path}]", "dry_run=true")
    )
    assert '"reduce_bucket_size": 500000000,' in result.stdout


@pytest.mark.slow
def test_read_only_nvme_path_refused_and_earlier_runs_kept(outputs, tmp_path):
    ok(run_pipeline(outputs, "trainer.max_steps=2"))
    before = [(r.info.run_id, r.info.status, r.data.metrics) for r in runs(outputs)]
    assert len(before) == 1 and before[0][1] == "FINISHED"
    nvme = tmp_path / "ro_nvme"
    nvme.mkdir()
    if subprocess.run(["chattr", "+i", str(nvme)], capture_output=True).returncode != 0:
        pytest.skip("needs chattr +i (root on ext4) to make a directory read-only for root")
    try:
        result = run_pipeline(outputs, "zero=stage3", "offload=nvme", f"offload.nvme_path={nvme}")
    finally:
        subprocess.run(["chattr", "-i", str(nvme)], check=True)
    assert_refused(result, "offload.nvme_path", "not writable")
    after = [(r.info.run_id, r.info.status, r.data.metrics) for r in runs(outputs)]
    assert after == before


@pytest.mark.parametrize("broken", ["garbage store", "read-only dir", "path under a file", "locked store"])
def test_a_broken_store_or_outputs_dir_is_one_line_and_left_as_it_was(broken, tmp_path):
    outputs = tmp_path / "outputs"
    locker = None
    if broken == "locked store":  # another process holds the whole store
        MlflowClient(store_uri(outputs)).search_experiments()
        hold = "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1]); db.execute('BEGIN EXCLUSIVE'); "
        hold += "print('locked', flush=True); time.sleep(600)"
        locker = subprocess.Popen(
            [sys.executable, "-c", hold, str(outputs / "mlflow.db")], stdout=subprocess.PIPE, text=True
        )
        assert locker.stdout.readline() == "locked\n"
        key, words = (
            "outputs_dir",
            "is locked by another process ((sqlite3.OperationalError) database is locked)",
        )
    elif broken == "garbage store":
        outputs.mkdir()
        (outputs / "mlflow.db").write_bytes(b"not a database at all")
        key, words = "tracking.uri", "is not an MLflow store"
    elif broken == "read-only dir":
        outputs.mkdir()
        if subprocess.run(["chattr", "+i", str(outputs)], capture_output=True).returncode != 0:
            pytest.skip("needs chattr +i (root on ext4) to make a directory read-only for root")
        key, words = "outputs_dir", "the MLflow store cannot be made in"
    else:
        (tmp_path / "a_file").write_text("")
        outputs = tmp_path / "a_file" / "outputs"
        key, words = "outputs_dir", "Not a directory"
    try:
        result = run_pipeline(outputs, "trainer.max_steps=1")
    finally:
        subprocess.run(["chattr", "-i", str(outputs)], capture_output=True)
        if locker:
            locker.kill()
    assert_refused(result, key, words)
    if broken == "garbage store":
        assert (outputs / "mlflow.db").read_bytes() == b"not a database at all"


def test_no_room_on_nvme_path(outputs, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    result = run_pipeline(
        outputs,
        "zero=stage3",
        "offload=nvme",
        f"offload.nvme_path={tmp_path}",
        f"offload.nvme_min_free={free * 2}",
    )
    assert_refused(result, "offload.nvme_path", "GiB free")


@pytest.mark.parametrize("name", OWN_CASES)
def test_own_model_and_data_refused_before_anything_starts(name, outputs, own):
    overrides, key, words = OWN_CASES[name]
    result = run_pipeline(outputs, *overrides(own))
    assert_refused(result, key, words)
    assert not (outputs / "mlflow.db").exists() and not (outputs / "runs").exists()


# The user's files and model read before anything starts: a bad row by its file, line and field.
def llama(o: Own, *args: str) -> list[str]:
    return [*HF, f"model.name_or_path={o.llama}", *args]


def chat(model: Path, o: Own, *args: str) -> list[str]:
    return [
        *HF,
        f"model.name_or_path={model}",
        f"data.train_files={o.chat}",
        "data.format=prompt_completion",
        *args,
    ]


READ_CASES = {
    "a line that is not JSON, by its line in the file": (
        lambda o, b: llama(o, f"data.train_files={b.long_jsonl}"),
        "data.train_files",
        "long.jsonl line 2001: not valid JSON (",
    ),
    "null text": (
        lambda o, b: llama(o, f"data.train_files={b.null_text}"),
        "data.train_files",
        "null.jsonl line 5, field 'text' has no value (null)",
    ),
    "numeric text": (
        lambda o, b: llama(o, f"data.train_files={b.numeric_text}"),
        "data.train_files",
        "numeric.jsonl line 6, field 'text' is 42 (int), not text",
    ),
    "text that is not UTF-8": (
        lambda o, b: llama(o, f"data.train_files={b.latin1_text}"),
        "data.train_files",
        "latin1.jsonl line 7, field 'text': not UTF-8 (byte 0xe9)",
    ),
    "a completion missing in a later row": (
        lambda o, b: chat(o.llama, o, f"data.train_files={b.no_completion}"),
        "data.train_files",
        "no_completion.jsonl line 30, field 'completion' is missing",
    ),
    "a csv row in a list mixing jsonl and csv, by its csv line": (
        lambda o, b: llama(o, f"data.train_files=[{o.train},{b.csv}]"),
        "data.train_files",
        "rows.csv line {csv_bad_line}: 2 cells, the header has 1",
    ),
    "train text shorter than one block": (
        lambda o, b: llama(o, f"data.train_files={b.tiny}"),
        "data.train_files",
        "tiny.jsonl: 3 tokens after tokenization, less than one block; one step needs data.seq_len=128",
    ),
    "eval text shorter than one block": (
        lambda o, b: llama(o, f"data.train_files={o.train}", f"data.eval_files={b.tiny}", "data.seq_len=64"),
        "data.eval_files",
        "tiny.jsonl: 3 tokens after tokenization, less than one block; one step needs data.seq_len=64",
    ),
    "prompts that fill the block": (
        lambda o, b: chat(o.llama, o, "data.seq_len=4"),
        "data.train_files",
        "no pair of chat.jsonl has a completion token within data.seq_len=4 tokens",
    ),
    "truncated weights": (
        lambda o, b: [*HF, f"model.name_or_path={b.truncated_weights}", f"data.train_files={o.train}"],
        "model.name_or_path",
        "truncated/model.safetensors cannot be read (",
    ),
    "zero-byte weights": (
        lambda o, b: [*HF, f"model.name_or_path={b.empty_weights}", f"data.train_files={o.train}"],
        "model.name_or_path",
        "empty_weights/model.safetensors cannot be read (",
    ),
    "a vocabulary larger than the embedding": (
        lambda o, b: [*HF, f"model.name_or_path={b.small_embedding}", f"data.train_files={o.train}"],
        "model.name_or_path",
        "the tokenizer has 512 tokens, more than the model's embedding size (300",
    ),
    "prompt_completion with a tokenizer without eos": (
        lambda o, b: chat(b.no_eos, o),
        "data.format",
        "has none: the model would never learn to stop",
    ),
}


@pytest.fixture(scope="module")
def bad(own: Own, tmp_path_factory: pytest.TempPathFactory) -> Bad:
    return make_bad(own, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", READ_CASES)
def test_own_files_read_before_anything_starts(name, outputs, own, bad):
    overrides, key, words = READ_CASES[name]
    result = run_pipeline(outputs, *overrides(own, bad))
    assert_refused(result, key, words.format(csv_bad_line=bad.csv_bad_line))
    assert not (outputs / "mlflow.db").exists() and not (outputs / "runs").exists()


def test_a_list_mixing_jsonl_and_csv_is_read_each_with_its_reader(own, tmp_path):
    texts = [json.loads(line)["text"] for line in own.eval.read_text().splitlines()]
    more = tmp_path / "more.csv"
    with more.open("w", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in texts)])
    ok(
        run_pipeline(
            tmp_path / "outputs", *llama(own, f"data.train_files=[{own.train},{more}]", "dry_run=true")
        )
    )
    rows = corpus.read([own.train, more], tmp_path / "cache", ["text"])
    assert rows["text"][-len(texts) :] == texts and len(rows) == len(
        own.train.read_text().splitlines()
    ) + len(texts)


def test_help_says_how_to_use_it():
    result = ok(run_pipeline(Path("unused"), "--help"))
    assert result.stdout.startswith("usage: python -m pipeline [group=option ...] [key=value ...] [-m]")
    assert "zero: stage0, stage1, stage2, stage3" in result.stdout
    assert result.stdout.count("  python -m pipeline ") >= 3  # examples


def test_liger_refuses_a_pretrained_model_type_it_has_no_kernels_for(outputs, own):
    """Liger's table of model types, read where Liger imports: its kit (make test puts it beside .venv,
    with Triton, off the tests' path) stands in for a GPU machine's install."""
    path = Path(sys.prefix) / "liger-kit"
    assert path.is_dir(), f"no {path}: make test installs it (make .venv/liger-kit)"
    kit = {"PYTHONPATH": str(path)}
    liger = [*HF, f"data.train_files=[{own.train}]", "trainer.liger_kernel=true", "dry_run=true"]
    gpt2 = run_pipeline(outputs, *liger, f"model.name_or_path={own.gpt2}", env=kit)
    assert gpt2.returncode == 2, gpt2.stderr
    assert "trainer.liger_kernel: Liger has no kernels for gpt2 models" in gpt2.stderr
    ok(run_pipeline(outputs, *liger, f"model.name_or_path={own.llama}", env=kit))
