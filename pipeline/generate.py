"""Text from a trained run's model.

    python -m pipeline.generate <run id | run dir | model dir> "a prompt" [--max-new-tokens N] [--zero3]
        [--ranks N]

A run id is looked up in the MLflow store (--outputs-dir / --tracking-uri, as pipeline.ui): its
run dir's model/ if this machine has it, else the model the run logged. A LoRA run (peft=lora|qlora)
without a merged model/ is read from its adapter/, on the base the adapter names. The completion is
greedy. --zero3 (or, on a GPU, a model larger than the GPU's free memory) partitions the weights
with DeepSpeed ZeRO-3 inference, parameters offloaded to host memory; --ranks N partitions them
across N ranks of this machine (its GPUs; processes on the CPU without one), which generate in step.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from pipeline import track
from pipeline.launch import local


def model_dir(target: str, uri: str, scratch: Path) -> Path:
    """The model (or adapter) directory a run id, a run dir, a model dir or an adapter dir names."""
    path = Path(target)
    found = _saved_in(path)
    if found is not None:
        return found
    if path.exists():
        raise SystemExit(f"error: {path} holds no trained model (model/config.json or adapter/)")
    store = track.Store(uri)
    run = store.find(target)
    if run is None:
        raise SystemExit(f"error: {target} is neither a model dir, a run dir, nor a run in {uri}")
    local = _saved_in(Path(run.tags.get(track.OUTPUT_DIR, "")))
    if local is not None:
        return local
    logged = {a.path for a in store.client.list_artifacts(run.info.run_id)}
    return store.download(target, "model" if "model" in logged else "adapter", scratch)


def _saved_in(path: Path) -> Path | None:
    """The model or adapter a dir is, or its run's merged model/ (first) or adapter/."""
    for candidate in (path, path / "model", path / "adapter"):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    return None


def load(path: Path, zero3: bool) -> PreTrainedModel:
    """The model, or an adapter on its base (transformers loads the base the adapter names, then it)."""
    if zero3 or _too_big(path):
        return _zero3(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(path).to(device).eval()


def _too_big(path: Path) -> bool:
    """On a GPU: the weights (as saved) do not fit its free memory."""
    if not torch.cuda.is_available():
        return False
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) or sum(
        p.stat().st_size for p in path.glob("*.bin")
    )
    return weights > torch.cuda.mem_get_info()[0]


def _zero3(path: Path) -> PreTrainedModel:
    """ZeRO-3 inference (the guide's): the weights load partitioned (the DeepSpeed config is live
    before from_pretrained) and are gathered layer by layer; parameters wait in host memory."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    local.world_of_one()
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "cpu", "pin_memory": torch.cuda.is_available()},
        },
        "bf16": {"enabled": torch.cuda.is_available() and torch.cuda.is_bf16_supported()},
    }
    live = HfDeepSpeedConfig(config)  # noqa: F841  (kept alive: from_pretrained reads it)
    model = AutoModelForCausalLM.from_pretrained(path)
    engine = deepspeed.initialize(model=model, config_params=config)[0]
    engine.module.eval()
    return engine.module


def complete(model: PreTrainedModel, path: Path, prompt: str, max_new_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    # Partitioned across ranks, every rank steps until the last one is done (each gathers its layers).
    synced = dist.is_initialized() and dist.get_world_size() > 1
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def rank_text(path: Path, prompt: str, max_new_tokens: int) -> str:
    """One rank of ZeRO-3 inference across ranks (--ranks): the weights partitioned, the completion.
    What the rank prints (DeepSpeed's logs) goes to stderr: stdout is the completion's, which the
    launching process prints."""
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return local.in_rank(lambda: complete(_zero3(path), path, prompt, max_new_tokens))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__.split("\n")[0])
    ap.add_argument("target", help="MLflow run id, run dir, or model dir")
    ap.add_argument("prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--zero3", action="store_true", help="partition the weights (DeepSpeed ZeRO-3 inference)")
    ap.add_argument("--ranks", type=int, default=1, help="ZeRO-3 inference across N ranks of this machine")
    ap.add_argument("--outputs-dir", default="outputs", help="where the default sqlite store lives")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store, if not the default one")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = model_dir(args.target, track.store_uri(args.outputs_dir, args.tracking_uri), Path(scratch))
        if args.ranks > 1:
            print(local.on_ranks(args.ranks, rank_text, path, args.prompt, args.max_new_tokens)[0])
        else:
            print(complete(load(path, args.zero3), path, args.prompt, args.max_new_tokens))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
