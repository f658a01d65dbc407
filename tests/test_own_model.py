"""Your own model and data: fine-tune a pretrained causal LM (model=hf) on your files (data=files)
with real DeepSpeed and MLflow, evaluate it, get the trained model back and generate from it."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.rank import corpus, tokenizer

from helpers import Own, artifact_text, mlflow_client, nan_model, ok, run_cli, run_pipeline, runs

STEPS, EVAL_EVERY = 6, 3


def own_model(own: Own, name: str = "llama") -> list[str]:
    return [
        "model=hf",
        f"model.name_or_path={getattr(own, name)}",
        "data=files",
        f"data.train_files={own.train}",
    ]


@pytest.fixture(scope="module")
def finetuned(own: Own, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's command as a 2-point sweep: ZeRO-2 and ZeRO-3, both with CPU offload."""
    out = tmp_path_factory.mktemp("finetune") / "outputs"
    result = ok(
        run_pipeline(
            out,
            "-m",
            *own_model(own),
            f"data.eval_files={own.eval}",
            "zero=stage2,stage3",
            "offload=cpu",
            f"trainer.max_steps={STEPS}",
            f"trainer.eval_steps={EVAL_EVERY}",
        )
    )
    return out, result.stdout


def points(out: Path) -> dict:
    return {r.data.params["zero"]: r for r in runs(out) if "mlflow.parentRunId" in r.data.tags}


def history(out: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow_client(out).get_metric_history(run_id, key)]


@pytest.mark.slow
def test_losses_agree_across_stages_and_eval_is_logged(finetuned):
    out, _ = finetuned
    by_stage = points(out)
    assert set(by_stage) == {"stage2", "stage3"}
    assert all(r.info.status == "FINISHED" for r in by_stage.values())
    two, three = (history(out, by_stage[s].info.run_id, "loss") for s in ("stage2", "stage3"))
    assert [s for s, _ in two] == list(range(1, STEPS + 1))
    assert [v for _, v in three] == pytest.approx([v for _, v in two], abs=1e-4)
    for run in by_stage.values():
        evals = history(out, run.info.run_id, "eval_loss")
        assert [s for s, _ in evals] == [EVAL_EVERY, STEPS]  # every eval_steps (the last one at the end)
        perplexity = history(out, run.info.run_id, "eval_perplexity")
        assert perplexity[-1][1] == pytest.approx(math.exp(evals[-1][1]), rel=1e-6)
        assert run.data.metrics["final_eval_loss"] == pytest.approx(evals[-1][1])
    assert history(out, by_stage["stage3"].info.run_id, "eval_loss")[-1][1] == pytest.approx(
        history(out, by_stage["stage2"].info.run_id, "eval_loss")[-1][1], abs=1e-4
    )


@pytest.mark.slow
def test_a_sweep_tokenizes_once(finetuned):
    out, stdout = finetuned
    assert stdout.count("data: tokenized") == 1 and stdout.count("(tokenized before)") == 1, stdout[-3000:]
    assert len([p for p in (out / "cache" / "tokenized").iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_saved_model_reloads_with_the_runs_eval_loss(finetuned):
    """The ZeRO-3 point's model/ (16-bit weights gathered from the partitions) is a HF model dir;
    its loss on the eval set is the run's final eval loss; MLflow holds it too."""
    out, stdout = finetuned
    run = points(out)["stage3"]
    model_dir = Path(run.data.tags["zerosweep.output_dir"]) / "model"
    assert f"trained model   {model_dir}" in stdout
    net = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    (cache,) = [p for p in (out / "cache" / "tokenized").iterdir() if p.is_dir()]
    _, eval_set = corpus.load(cache)
    losses = []
    with torch.no_grad():
        for i in range(0, len(eval_set), 8):  # the Trainer's eval batch: trainer.micro_batch_size
            batch = eval_set[i : i + 8]
            ids = torch.tensor(batch["input_ids"])
            losses += [net(input_ids=ids, labels=torch.tensor(batch["labels"])).loss.item()] * len(ids)
    assert sum(losses) / len(losses) == pytest.approx(run.data.metrics["final_eval_loss"], rel=1e-4)
    logged = {a.path for a in mlflow_client(out).list_artifacts(run.info.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= logged


@pytest.mark.slow
def test_gpt2_prompt_completion_fp32_export_and_generate(own: Own, outputs: Path):
    """A second architecture, prompt/completion data with a held-out eval fraction, ZeRO-2, the fp32
    export (zero_to_fp32) beside the saved model; then text from the run, found by its id, the same
    from one process as from ZeRO-3 inference across 2 ranks (gloo). What the datasets library
    caches of the raw file stays under outputs_dir, not in the home directory."""
    home_cache = outputs.parent / "home-datasets-cache"  # where it would go by default
    ok(
        run_pipeline(
            outputs,
            "model=hf",
            f"model.name_or_path={own.gpt2}",
            "data=files",
            f"data.train_files={own.chat}",
            "data.format=prompt_completion",
            "data.eval_fraction=0.1",
            "zero=stage2",
            "trainer.export_fp32=true",
            f"trainer.max_steps={STEPS}",
            env={"HF_DATASETS_CACHE": str(home_cache)},
        )
    )
    assert not list(home_cache.rglob("*.arrow")) and list((outputs / "cache" / "datasets").rglob("*.arrow"))
    (run,) = runs(outputs)
    assert run.info.status == "FINISHED" and "final_eval_loss" in run.data.metrics
    run_dir = Path(run.data.tags["zerosweep.output_dir"])
    saved, exported = (AutoModelForCausalLM.from_pretrained(run_dir / d) for d in ("model", "model_fp32"))
    assert exported.config.model_type == "gpt2" and exported.dtype == torch.float32
    weights, fp32 = saved.state_dict(), exported.state_dict()
    assert weights.keys() == fp32.keys()
    for key, value in weights.items():
        assert torch.equal(value, fp32[key]), key
    texts = []
    for ranks in ([], ["--ranks", "2"]):  # ZeRO-3 inference, the weights partitioned across 2 ranks
        generate = ["pipeline.generate", run.info.run_id, "Continue: Python", "--outputs-dir", str(outputs)]
        generated = run_cli([sys.executable, "-m", *generate, "--max-new-tokens", "12", *ranks], timeout=300)
        assert generated.returncode == 0, generated.stderr[-3000:]
        texts.append(generated.stdout)
        # Each rank's DeepSpeed loads its gloo shared-memory op (and says so, on the rank's stderr).
        assert generated.stderr.count("deepspeed_shm_comm_op built successfully") == (2 if ranks else 0)
    assert texts[0].strip() and texts[1] == texts[0]


def test_prompt_tokens_carry_no_loss():
    """A crafted pair: labels are -100 on the prompt and the padding, the completion's ids (and EOS)
    elsewhere, so the model's loss is the loss on the completion tokens only."""
    tok = tokenizer.byte_level()
    example = corpus.pair(tok, "Q: 2+2?", " A: 4", seq_len=16, pad=0)
    prompt, answer = list(b"Q: 2+2?"), list(b" A: 4")
    assert example["input_ids"] == prompt + answer + [0] * (16 - len(prompt + answer))
    assert example["labels"] == [-100] * len(prompt) + answer + [-100] * (16 - len(prompt + answer))
    assert example["attention_mask"] == [1] * len(prompt + answer) + [0] * (16 - len(prompt + answer))
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    net = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    )
    ids = torch.tensor([example["input_ids"]])
    out = net(
        input_ids=ids,
        attention_mask=torch.tensor([example["attention_mask"]]),
        labels=torch.tensor([example["labels"]]),
    )
    start = len(
        prompt
    )  # logits at position t predict token t + 1: the completion's first comes from the prompt's last
    targets = torch.tensor(answer)
    by_hand = torch.nn.functional.cross_entropy(out.logits[0, start - 1 : start - 1 + len(answer)], targets)
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_byte_level_tokenizer_is_the_byte_corpus():
    """Built models train on raw bytes (data.py) and save this tokenizer: generation reads them alike."""
    text = "héllo\n\tworld ∑\x00"
    assert tokenizer.byte_level()(text)["input_ids"] == list(text.encode())
    assert tokenizer.byte_level().decode(list(text.encode())) == text
    assert json.loads(tokenizer.byte_level().backend_tokenizer.to_str())["model"]["type"] == "BPE"


@pytest.mark.slow
def test_a_diverged_run_ends_failed_not_looking_good(own: Own, outputs: Path, tmp_path: Path):
    """A model whose loss is nan from the first step: the run ends FAILED with the step, its loss is
    logged as nan (never as a number), no final figures are logged, the command exits non-zero."""
    broken = nan_model(own, tmp_path)
    args = [
        "model=hf",
        f"model.name_or_path={broken}",
        "data=files",
        f"data.train_files={own.train}",
        "trainer.max_steps=4",
    ]
    result = run_pipeline(outputs, *args)
    assert result.returncode != 0
    assert "loss is nan/inf at step 1" in result.stderr
    (run,) = runs(outputs)
    assert run.info.status == "FAILED"
    assert "loss is nan/inf at step 1" in artifact_text(outputs, run.info.run_id, "error.txt", tmp_path)
    losses = history(outputs, run.info.run_id, "loss")
    assert [step for step, _ in losses] == [1] and math.isnan(losses[0][1])
    assert "final_loss" not in run.data.metrics
