"""Test helpers: run the real CLI as a user would, and read what landed in MLflow."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.track import store_uri
from pipeline.ui import SERVER_ENV, server_command, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """This environment without MLflow's variables (MLFLOW_RUN_ID would override the nesting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def pipeline_cmd(outputs: Path, *args: str, module: str = "pipeline") -> list[str]:
    """`python -m pipeline [-m] outputs_dir=<outputs> ARGS...`."""
    flags = [a for a in args if a.startswith("-")]  # Hydra's parser wants -m before the overrides
    return [
        sys.executable,
        "-m",
        module,
        *flags,
        f"outputs_dir={outputs}",
        *(a for a in args if a not in flags),
    ]


def run_pipeline(
    outputs: Path, *args: str, module: str = "pipeline", timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI from the project root to its end (env: variables added to the CLI's)."""
    cmd = pipeline_cmd(outputs, *args, module=module)
    env = cli_env() | (env or {})
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    out, err = result.stdout[-4000:], result.stderr[-6000:]
    assert result.returncode == 0, f"exit {result.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
    return result


def wait_for(what: str, found: Callable[[], object], timeout: float = 240) -> Any:
    """Polls found() until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def mlflow_client(store: Path | str) -> MlflowClient:
    """A client of the store the pipeline made under an outputs dir (its own URI rule), or of a
    tracking server's URI."""
    return MlflowClient(store if isinstance(store, str) else store_uri(store))


def runs(store: Path | str, experiment: str = "zerosweep") -> list[Run]:
    """Every run of the experiment, oldest first."""
    client = mlflow_client(store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def loss_steps(store: Path | str, run_id: str) -> list[int]:
    return [m.step for m in mlflow_client(store).get_metric_history(run_id, "loss")]


def artifact_text(outputs: Path, run_id: str, path: str, into: Path) -> str:
    return Path(mlflow_client(outputs).download_artifacts(run_id, path, str(into))).read_text()


@dataclass
class Sweep:
    """A finished 2-point sweep (zero=stage1,stage2): its store, sweep dir, sweep.json and CLI output."""

    outputs_dir: Path
    sweep_dir: Path
    info: dict[str, Any]
    stdout: str

    @property
    def client(self) -> MlflowClient:
        return mlflow_client(self.outputs_dir)


@dataclass
class Own:
    """A user's own model and data, made offline: a small Llama and GPT-2 saved with their
    tokenizer (a BPE trained on the shipped corpus), jsonl files cut from the corpus, and the
    wrong kinds of each for the refusals."""

    llama: Path
    gpt2: Path
    not_causal: Path  # a vision model's config
    no_tokenizer: Path  # weights, no tokenizer files
    train: Path  # {"text": ...} rows
    eval: Path
    chat: Path  # {"prompt": ..., "completion": ...} rows
    empty: Path


def make_own(root: Path) -> Own:
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        ViTConfig,
    )

    corpus = (ROOT / "data" / "tiny_corpus.txt").read_text()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<eos>"], initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator([corpus], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    own = Own(
        *(
            root / name
            for name in (
                "llama",
                "gpt2",
                "vit",
                "no_tokenizer",
                "train.jsonl",
                "eval.jsonl",
                "chat.jsonl",
                "empty.jsonl",
            )
        )
    )
    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    for path, net in (
        (own.llama, LlamaForCausalLM(llama)),
        (
            own.gpt2,
            GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=256)),
        ),
    ):
        net.save_pretrained(path)
        tokenizer.save_pretrained(path)
    LlamaForCausalLM(llama).save_pretrained(own.no_tokenizer)
    ViTConfig().save_pretrained(own.not_causal)
    pieces = [corpus[i : i + 400] for i in range(0, len(corpus), 400)]

    def write(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(own.train, [{"text": p} for p in pieces[:800]])
    write(own.eval, [{"text": p} for p in pieces[800:]])
    write(own.chat, [{"prompt": f"Continue: {p[:60]}", "completion": p[60:120]} for p in pieces[:400]])
    own.empty.write_text("")
    return own


def nan_model(own: Own, into: Path) -> Path:
    """own.llama with one nan weight: its loss is nan from the first step (a diverged run)."""
    import torch
    from transformers import AutoModelForCausalLM

    broken = into / "nan_llama"
    net = AutoModelForCausalLM.from_pretrained(own.llama)
    with torch.no_grad():
        net.lm_head.weight[0, 0] = float("nan")
    net.save_pretrained(broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((own.llama / name).read_bytes())
    return broken


def start_pipeline(outputs: Path, *args: str, log: Path) -> subprocess.Popen:
    """Start the CLI from the project root without waiting for it (its output goes to log)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            pipeline_cmd(outputs, *args), cwd=ROOT, env=cli_env(), stdout=out, stderr=subprocess.STDOUT
        )


def search_trials(outputs: Path) -> list[Run]:
    """The runs of search trials (points tried, skipped or reused), oldest first."""
    return [r for r in runs(outputs) if "zerosweep.search_point" in r.data.tags]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, as a team runs one: a sqlite backend, and artifacts
    stored by the server (--artifacts-destination) and served through it. Stopped and started
    again on the same port and store, it is the same server back after an outage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"http://127.0.0.1:{free_port()}"
        self._proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        port = int(self.uri.rsplit(":", 1)[1])
        cmd = server_command(
            f"sqlite:///{self.root}/server.db", str(self.root), port, self.root / "served-artifacts"
        )
        log = (self.root / "server.log").open("a")
        self._proc = subprocess.Popen(
            cmd, env=cli_env() | SERVER_ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_ready(self.uri, self._proc)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGKILL)  # the server and its workers, at once: an outage
            self._proc.wait()
            self._proc = None
