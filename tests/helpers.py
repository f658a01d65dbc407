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

from filelock import FileLock
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.track import store_uri
from pipeline.track.store import sqlite_path
from pipeline.ui import SERVER_ENV, server_command, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """This environment without MLflow's variables (MLFLOW_RUN_ID would override the nesting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# The system-metrics sampler is a process of its own beside each run, ~2.5 s of CPU on these 2 cores:
# the tests that look at system metrics ask for it (SAMPLED), the others run without it (UNSAMPLED).
SAMPLED, UNSAMPLED = "tracking.system_metrics=true", "tracking.system_metrics=false"


def pipeline_cmd(outputs: Path, *args: str, module: str = "pipeline") -> list[str]:
    """`python -m pipeline [-m] outputs_dir=<outputs> UNSAMPLED ARGS...` (unless ARGS say whether to
    sample: SAMPLED)."""
    flags = [a for a in args if a.startswith("-")]  # Hydra's parser wants -m before the overrides
    sampled = any(a.startswith("tracking.system_metrics=") for a in args)
    return [
        sys.executable,
        "-m",
        module,
        *flags,
        f"outputs_dir={outputs}",
        *([] if sampled else [UNSAMPLED]),
        *(a for a in args if a not in flags),
    ]


def run_pipeline(
    outputs: Path, *args: str, module: str = "pipeline", timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI from the project root to its end (env: variables added to the CLI's)."""
    return run_cli(pipeline_cmd(outputs, *args, module=module), timeout=timeout, env=env)


def run_cli(
    cmd: list[str], timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` (cmd as pipeline_cmd makes it) from the project root, to its end,
    its output captured (start_cli: warm unless env adds a variable read on import)."""
    proc = start_cli(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def start_cli(
    cmd: list[str], env: dict[str, str] | None = None, start_new_session: bool = False, **streams: Any
) -> subprocess.Popen:
    """`python -m MODULE ARGS...` started from the project root with the CLI's environment (cli_env,
    plus env), as subprocess.Popen does (streams: stdout, stderr, text). Forked warm (WarmPopen)
    unless env adds a variable that a library reads on import, or ZEROSWEEP_TEST_COLD_CLI=1."""
    full_env = cli_env() | (env or {})
    warm = cmd[:2] == [sys.executable, "-m"] and os.environ.get("ZEROSWEEP_TEST_COLD_CLI") != "1"
    if warm and all(name.startswith("ZEROSWEEP_") for name in env or {}):
        return WarmPopen(cmd, full_env, start_new_session, **streams)
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, start_new_session=start_new_session, **streams)


class WarmPopen(subprocess.Popen):
    """`python -m MODULE ARGS...` forked from a process that imported torch, transformers, DeepSpeed,
    MLflow and Hydra once (multiprocessing's forkserver, one per test worker), instead of a fresh
    interpreter importing them again: ~7 s of CPU a start on 2 cores. The child runs the module as
    `python -m` does (runpy, sys.argv, the CLI's environment, the project root as cwd, its own
    process group when asked), then Python's own exit steps (threads joined, atexit's handlers run).
    A subprocess.Popen to the test: pid, pipes, poll, wait, communicate, signals. What only a fresh
    interpreter shows (what a start imports: test_startup.py) is tested cold, as are starts whose
    added variables a library reads on import (HF_DATASETS_CACHE, TORCHDYNAMO_DISABLE, ...)."""

    PRELOAD = [
        "torch",
        "transformers",
        "deepspeed",
        "mlflow",
        "mlflow.store.tracking.sqlalchemy_store",
        "hydra",
        "peft",
        "pipeline.app",
        "pipeline.check.gate",
        "pipeline.launch.local",
        "pipeline.rank.train",
        "pipeline.sweep.callback",
        "helpers",
    ]
    _context: Any = None

    def __init__(
        self,
        cmd: list[str],
        env: dict[str, str],
        start_new_session: bool = False,
        stdout: Any = None,
        stderr: Any = None,
        text: bool = False,
    ) -> None:
        import io
        import multiprocessing
        import threading
        from multiprocessing import process

        if WarmPopen._context is None:
            WarmPopen._context = multiprocessing.get_context("forkserver")
            WarmPopen._context.set_forkserver_preload(self.PRELOAD)
        self.args, self.stdin, self.stdout, self.stderr = cmd, None, None, None
        self.returncode, self.encoding, self.errors, self.pipesize = None, None, None, -1
        self.text_mode = self.universal_newlines = text
        self._sigint_wait_secs, self._closed_child_pipe_fds = 0.25, False
        self._communication_started, self._input, self._child_created = False, None, False
        self._waitpid_lock = threading.Lock()
        given: list[int] = []  # the child's fds 1 and 2
        for name, where in (("stdout", stdout), ("stderr", stderr)):
            if where == subprocess.PIPE:
                read, write = os.pipe()
                stream = open(read, "rb")  # noqa: SIM115 (the test reads it, as a Popen's pipe)
                setattr(self, name, io.TextIOWrapper(stream) if text else stream)
                given.append(write)
            elif where == subprocess.STDOUT:
                given.append(os.dup(given[0]))
            elif where == subprocess.DEVNULL:
                given.append(os.open(os.devnull, os.O_WRONLY))
            elif where is None:
                given.append(os.dup(1 if name == "stdout" else 2))
            else:  # a file
                given.append(os.dup(where.fileno()))
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a fresh process inherits that
        try:
            self._process = WarmPopen._context.Process(
                target=_warm_main,
                args=(cmd[2], cmd[3:], env, start_new_session, ignored, *(_Fd(fd) for fd in given)),
            )
            self._process.start()
        finally:
            for fd in given:
                os.close(fd)
        process._children.discard(self._process)  # multiprocessing need not join it at exit
        self.pid, self._child_created = self._process.pid, True

    def _internal_poll(self, *args: Any, **kwargs: Any) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def _wait(self, timeout: float | None) -> int:
        if self.returncode is None:
            self._process.join(timeout)
            if self._process.exitcode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = self._process.exitcode
        return self.returncode


class _Fd:
    """An fd of this process that reaches the forked child as one of its own (sent with its start)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        from multiprocessing import reduction

        return (_detach, (reduction.DupFd(self.fd),))


def _detach(fd: Any) -> int:
    return fd.detach()


def _warm_main(
    module: str,
    args: list[str],
    env: dict[str, str],
    new_session: bool,
    sigint_ignored: bool,
    out: int,
    err: int,
) -> None:
    """In the forked child: `python -m module args`, then the interpreter's exit steps, then exit.
    What the fork server imported is taken out of the collector's full passes at once (the CPython
    docs' advice for forked workers): each of a run's full collections would rescan its ~720k objects,
    ~0.4 s of CPU, and copy every page that holds one."""
    import atexit
    import gc
    import runpy
    import threading
    import traceback

    gc.freeze()
    for stream, fd in ((sys.stdout, out), (sys.stderr, err)):
        stream.flush()
        os.dup2(fd, stream.fileno())
        os.close(fd)
        stream.reconfigure(line_buffering=True, write_through=True)  # PYTHONUNBUFFERED, as cli_env's
    if new_session:
        os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(ROOT)
    sys.argv = [sys.argv[0], *args]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # SIGINT as inherited: Python's handler, or ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.default_int_handler)
    sys.modules.pop(module if module.endswith("__main__") else f"{module}.__main__", None)  # run anew
    code, interrupted = 0, False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as at the interpreter's exit: its threads first, then atexit's handlers
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:  # as Python ends on an uncaught KeyboardInterrupt: by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


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
    tracking server's URI. A sqlite store is opened under the lock the pipeline makes it under: a
    test polling a run that is starting would otherwise open it mid-migration and break both."""
    if isinstance(store, str):
        return MlflowClient(store)
    uri = store_uri(store)
    db = sqlite_path(uri)
    if db is None or not db.parent.exists():
        return MlflowClient(uri)
    with FileLock(f"{db}.lock"):
        return MlflowClient(uri)  # it opens the store at once: not while the pipeline makes it


def runs(store: Path | str, experiment: str = "zerosweep") -> list[Run]:
    """Every run of the experiment, oldest first (none where the pipeline has not made its store yet:
    a test polling a run that is starting leaves the making to the pipeline)."""
    if isinstance(store, Path) and not sqlite_path(store_uri(store)).exists():
        return []
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


@dataclass
class Bad:
    """The user's files each with one defect, cut from own's: data a reader or the tokenizer refuses,
    and own.llama with broken weights or tokenizer (copies: the config and tokenizer edited, the
    weights cut)."""

    long_jsonl: Path  # 2,400 lines of own.train's rows, line 2001 not JSON
    null_text: Path  # line 5: {"text": null}
    numeric_text: Path  # line 6: {"text": 42}
    latin1_text: Path  # line 7: a Latin-1 byte in the text
    no_completion: Path  # own.chat with line 30 missing its completion
    csv: Path  # own.train's rows as csv (cells of many lines), the third with an extra cell
    csv_bad_line: int  # the line of the file that row starts on
    tiny: Path  # one short document
    truncated_weights: Path
    empty_weights: Path
    small_embedding: Path  # config.json's vocab_size below the tokenizer's 512
    no_eos: Path  # the tokenizer without eos (and pad) token


def make_bad(own: Own, root: Path) -> Bad:
    import csv
    import json
    import shutil

    lines = own.train.read_text().splitlines(keepends=True)
    texts = [json.loads(line)["text"] for line in lines[:100]]
    bad = Bad(
        *(root / name for name in ("long.jsonl", "null.jsonl", "numeric.jsonl", "latin1.jsonl")),
        root / "no_completion.jsonl",
        root / "rows.csv",
        2 + sum(text.count("\n") + 1 for text in texts[:2]),
        *(root / name for name in ("tiny.jsonl", "truncated", "empty_weights", "small_embedding", "no_eos")),
    )
    bad.long_jsonl.write_text("".join((lines * 3)[:2000]) + '{"text": "cut off\n' + "".join(lines[:400]))
    for path, number, line in (
        (bad.null_text, 5, b'{"text": null}\n'),
        (bad.numeric_text, 6, b'{"text": 42}\n'),
        (bad.latin1_text, 7, b'{"text": "caf\xe9 au lait"}\n'),
    ):
        path.write_bytes("".join(lines[: number - 1]).encode() + line + "".join(lines[number:]).encode())
    chat = own.chat.read_text().splitlines(keepends=True)
    bad.no_completion.write_text(
        "".join(chat[:29]) + json.dumps({"prompt": "Continue: x"}) + "\n" + "".join(chat[30:])
    )
    with bad.csv.open("w", newline="") as f:
        rows = [[text] for text in texts]
        csv.writer(f).writerows([["text"], *rows[:2], [*rows[2], "stray"], *rows[3:]])
    bad.tiny.write_text(json.dumps({"text": "hi"}) + "\n")
    for path in (bad.truncated_weights, bad.empty_weights, bad.small_embedding, bad.no_eos):
        shutil.copytree(own.llama, path)
    weights = (own.llama / "model.safetensors").read_bytes()
    (bad.truncated_weights / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (bad.empty_weights / "model.safetensors").write_bytes(b"")
    for path, name, edit in (
        (bad.small_embedding, "config.json", {"vocab_size": 300}),
        (bad.no_eos, "tokenizer_config.json", {"eos_token": None, "pad_token": None}),
    ):
        settings = json.loads((path / name).read_text())
        settings.update(edit)
        (path / name).write_text(json.dumps({k: v for k, v in settings.items() if v is not None}))
    return bad


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
        return start_cli(pipeline_cmd(outputs, *args), stdout=out, stderr=subprocess.STDOUT)


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


def assert_carries(want: dict, got: dict, path: str = "") -> None:
    """Every key of `want` (a DeepSpeed JSON: the guide's, a user's file) is in `got` (the pipeline's
    DeepSpeed dict) with the same value, nested sections too; `got` may hold more."""
    for key, value in want.items():
        where = f"{path}.{key}".lstrip(".")
        assert key in got, f"{where} missing from the pipeline's DeepSpeed dict"
        if isinstance(value, dict):
            assert_carries(value, got[key], where)
        else:
            assert got[key] == value, f"{where}: given {value!r}, pipeline {got[key]!r}"


def rank_model(overrides: list[str], out: Path, monkeypatch: Any) -> Any:
    """The model as a rank builds it (train.model_and_arguments), in this process: a world of one
    (monkeypatch: pytest's, for its environment), taken down after."""
    import torch.distributed as dist
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from pipeline import plan
    from pipeline.check import compose
    from pipeline.job import Job
    from pipeline.launch import local
    from pipeline.rank import model, tokenizer, train

    for key, value in local.one_rank_env().items():
        monkeypatch.setenv(key, value)
    cfg = compose.compose_point([*overrides, f"outputs_dir={out}"])
    job = Job.of(cfg, plan.make(cfg, out, use_cpu=True), out, 1)
    try:
        net, _ = train.model_and_arguments(job, model.model_config(cfg, tokenizer.BYTE_VOCAB))
    finally:
        unset_hf_deepspeed_config()
        if dist.is_initialized():
            dist.destroy_process_group()
    return net
