"""Checks of the user's own model and data (model=hf, data=files) before anything starts: each
problem is one ConfigError naming the key and the fix. The model's config, tokenizer and weight
headers are read, never the weights; every data file is read fully, once per version of the file,
with the standard library (a bad row named by its real line), and tokenized only as far as one
block."""

import csv
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import READERS, Config, DataConf, DataFormat, DataSource, ModelSource, is_saved_dataset
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # transformers: loaded only where a check needs a tokenizer
    from transformers import PreTrainedTokenizerBase

WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def check(cfg: Config) -> None:
    pretrained = cfg.model.source == ModelSource.pretrained
    files = cfg.data.source == DataSource.files
    if pretrained:
        _check_model(cfg)
    if files:
        _check_data(cfg)
    if pretrained or files:
        from pipeline.rank import tokenizer

        tok = tokenizer.load(cfg)
        if pretrained:
            _check_vocab(cfg, tok)
        if files:
            _check_eos(cfg, tok)
            _check_amounts(cfg.data, tok)


@lru_cache(maxsize=8)
def pretrained_config(name_or_path: str):  # -> PretrainedConfig
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        where = "no such directory" if not Path(name_or_path).exists() else _first_line(e)
        raise ConfigError(
            "model.name_or_path",
            f"no model at {name_or_path} ({where})",
            "point it at a directory that from_pretrained loads (config.json and the weights)",
        ) from None


def _check_model(cfg: Config) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    from pipeline.rank import tokenizer

    name = cfg.model.name_or_path
    config = pretrained_config(name)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(
            "model.name_or_path",
            f"{name} holds a {config.model_type} model, which is not a causal LM",
            "use a model that AutoModelForCausalLM loads (Llama, GPT-2, Qwen2, ...)",
        )
    if cfg.trainer.liger_kernel:
        _check_liger_knows(config)
    if Path(name).is_dir():
        if not any(any(Path(name).glob(pattern)) for pattern in WEIGHTS):
            raise ConfigError(
                "model.name_or_path", f"no weights in {name}", "save the model there with save_pretrained"
            )
        for weights in sorted(Path(name).glob("*.safetensors")):
            _check_weights(weights)
    try:
        tokenizer.pretrained(name)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(
            "model.name_or_path",
            f"no tokenizer in {name} ({_first_line(e)})",
            "save the model's tokenizer there (tokenizer.save_pretrained), or use data.tokenizer=byte",
        ) from None
    limit = getattr(config, "max_position_embeddings", None)
    if limit and cfg.data.seq_len > limit:
        raise ConfigError(
            "data.seq_len",
            f"{cfg.data.seq_len} is above the model's max_position_embeddings ({limit})",
            f"set data.seq_len={limit} or less",
        )


def _check_liger_knows(config) -> None:  # config: PretrainedConfig
    """Given a model type it has no kernels for, Liger logs one info line and the Trainer trains without
    them. Liger's own table of model types is read wherever Liger imports (it needs Triton: a GPU
    machine, or its kit beside the tests); elsewhere preflight refuses Liger before a run starts."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return
    if config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(
            "trainer.liger_kernel",
            f"Liger has no kernels for {config.model_type} models: the Trainer would train it without them",
            "use trainer.liger_kernel=false, or a model type Liger patches (llama, mistral, qwen2, gemma...)",
        )


def _check_weights(path: Path) -> None:
    """A truncated or empty weights file fails in from_pretrained, in the ranks, without its name:
    its header and tensor table are read here (not the tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except SafetensorError as e:
        raise ConfigError(
            "model.name_or_path",
            f"{path} cannot be read ({_first_line(e)}; {path.stat().st_size:,} bytes)",
            "save the model again with save_pretrained, or copy the whole file",
        ) from None


def _check_vocab(cfg: Config, tok: "PreTrainedTokenizerBase") -> None:
    """A token id at or above the embedding's rows is an IndexError (a device-side assert on a
    GPU) after DeepSpeed started."""
    rows = getattr(pretrained_config(cfg.model.name_or_path), "vocab_size", None)
    if rows and len(tok) > rows:
        raise ConfigError(
            "model.name_or_path",
            f"the tokenizer has {len(tok):,} tokens, more than the model's embedding size"
            f" ({rows:,}, vocab_size in config.json)",
            "use the model's own tokenizer, or resize its embedding (model.resize_token_embeddings("
            "len(tokenizer))) and save both with save_pretrained",
        )


def _check_eos(cfg: Config, tok: "PreTrainedTokenizerBase") -> None:
    """A pair's labels end with the EOS (corpus.pair): without one the model never learns to stop."""
    if cfg.data.format == DataFormat.prompt_completion and tok.eos_token_id is None:
        raise ConfigError(
            "data.format",
            f"prompt_completion needs a tokenizer with an eos token, and {_which(tok)} has none: the model"
            " would never learn to stop",
            "give the tokenizer one (tokenizer.eos_token = ..., save_pretrained), or use data.format=text",
        )


def _which(tok: "PreTrainedTokenizerBase") -> str:
    return f"the tokenizer of {tok.name_or_path}" if tok.name_or_path else "the byte-level tokenizer"


def _check_data(cfg: Config) -> None:
    d = cfg.data
    for key, paths in _splits(d):
        for path in paths:
            _check_file(key, path)
            stat = path.stat()
            _read_fully(key, path, stat.st_size, stat.st_mtime_ns, tuple(d.columns.items()))


def _splits(d: DataConf) -> list[tuple[str, list[Path]]]:
    return [
        (key, paths)
        for key, paths in (("data.train_files", d.train_paths), ("data.eval_files", d.eval_paths))
        if paths
    ]


def _check_file(key: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(key, f"{path} does not exist", "give the path of a data file or a saved dataset")
    if path.is_dir():
        if not is_saved_dataset(path):
            raise ConfigError(
                key, f"{path} is a directory but not a saved dataset", "give a file, or a save_to_disk dir"
            )
        return
    if path.suffix not in READERS:
        raise ConfigError(
            key, f"no reader for {path.suffix or 'files without a suffix'} ({path.name})", _SUFFIXES
        )
    if path.stat().st_size == 0:
        raise ConfigError(key, f"{path} is empty", "give a file with training data in it")


@lru_cache(maxsize=256)
def _read_fully(key: str, path: Path, size: int, mtime_ns: int, columns: tuple[tuple[str, str], ...]) -> None:
    """Every row of one file, as its kind's reader reads it in the ranks: the first row has the
    columns, and every row a text value in each. Once per version of the file (size, mtime): a
    sweep's points and a search's trials check it again. A refusal is not cached (it ends the
    command)."""
    seen = 0
    try:
        for seen, (where, row) in enumerate(rows(path), 1):
            if seen == 1:
                _check_columns(path, row, dict(columns))
            problem = _problem(row, [column for _, column in columns])
            if problem:
                raise BadRow(f"{where}, {problem}")
    except BadRow as e:
        raise ConfigError(key, f"{path} {e}", "correct or remove that row") from None
    if not seen:
        raise ConfigError(key, f"{path} holds no rows", "give a file with training data in it")


def _check_columns(path: Path, row: dict, columns: dict[str, str]) -> None:
    """The fields the format reads are columns of the data (its first row)."""
    for field, column in columns.items():
        if column not in row:
            raise ConfigError(
                f"data.{field}",
                f"'{column}' is not a column of {path.name} (columns: {', '.join(row)})",
                f"set data.{field} to one of {', '.join(row)}" + _FORMAT_HINT[field],
            )


def _problem(row: dict, columns: list[str]) -> str | None:
    """What the ranks could not tokenize in this row: bytes that are not UTF-8 (in any field: the
    reader refuses them all), or a used field missing, null or not text."""
    for name, value in row.items():
        found = isinstance(value, str) and _ESCAPED.search(value)
        if found:
            return f"field '{name}': not UTF-8 (byte 0x{ord(found.group()) - 0xDC00:02x})"
    for column in columns:
        if column not in row:
            return f"field '{column}' is missing"
        value = row[column]
        if value is None:
            return f"field '{column}' has no value (null)"
        if not isinstance(value, str):
            return f"field '{column}' is {json.dumps(value)[:40]} ({type(value).__name__}), not text"
    return None


class BadRow(Exception):
    """A row a reader cannot read: where it is and what is wrong."""


def rows(path: Path) -> Iterator[tuple[str, dict]]:
    """The rows of a data file or saved dataset, each with where it is ("line 59001", the line of
    the file, where the file has lines)."""
    if path.is_dir() or path.suffix == ".parquet":
        return _arrow_rows(path)
    return {"json": _json_rows, "csv": _csv_rows, "text": _text_rows}[READERS[path.suffix]](path)


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """JSON lines, or one JSON array of objects (the json reader takes both). Bytes that are not
    UTF-8 come through escaped, for _problem to name their field."""
    with path.open("rb") as f:
        if f.read(1024).lstrip().startswith(b"["):
            f.seek(0)
            for number, row in enumerate(_json(f.read(), "the array"), 1):
                yield f"item {number}", _object(row, f"item {number}")
            return
        f.seek(0)
        for number, line in enumerate(f, 1):
            if line.strip():
                yield f"line {number}", _object(_json(line, f"line {number}"), f"line {number}")


def _json(text: bytes, where: str) -> object:
    try:
        return json.loads(text.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as e:
        raise BadRow(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadRow(f"{where}: a JSON {type(value).__name__}, not an object of fields")
    return value


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """A header, then rows of as many cells; an empty cell is a missing value (as pandas reads it)."""
    csv.field_size_limit(2**31 - 1)  # a document in a cell may pass the default 128 KiB
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, [])
            start = reader.line_num + 1
            for cells in reader:
                where, start = f"line {start}", reader.line_num + 1
                if len(cells) > len(header):
                    raise BadRow(f"{where}: {len(cells)} cells, the header has {len(header)}")
                if cells:
                    yield where, {name: cell or None for name, cell in zip(header, cells, strict=False)}
        except csv.Error as e:
            raise BadRow(f"line {reader.line_num}: not valid CSV ({e})") from None


def _text_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """One row per line, in the column "text" (the text reader's)."""
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            yield f"line {number}", {"text": line.decode("utf-8", "surrogateescape").rstrip("\r\n")}


def _arrow_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Parquet and saved datasets are typed columns: read through the datasets library (streamed)."""
    import datasets

    from pipeline.rank import corpus

    if path.is_dir():
        data = corpus.load_saved(path)
    else:
        data = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True)
    for number, row in enumerate(data, 1):
        yield f"row {number}", row


def _check_amounts(d: DataConf, tok: "PreTrainedTokenizerBase") -> None:
    """One block at least in train and eval, counted as the ranks tokenize (corpus.py): tokens of
    the documents with their EOS (format=text), or pairs with a completion token within seq_len."""
    for key, paths in _splits(d):
        have = _amount(paths, d, tok)
        names = ", ".join(p.name for p in paths)
        if d.format == DataFormat.text and have < d.seq_len:
            shorter = f", or data.seq_len={have} or less" if have else ""
            raise ConfigError(
                key,
                f"{names}: {have} tokens after tokenization, less than one block; one step needs"
                f" data.seq_len={d.seq_len}",
                f"give more text{shorter}",
            )
        if d.format == DataFormat.prompt_completion and not have:
            raise ConfigError(
                key,
                f"no pair of {names} has a completion token within data.seq_len={d.seq_len} tokens"
                " (the prompts fill the block): one step needs one such pair",
                "give shorter prompts or a larger data.seq_len",
            )


def _amount(paths: list[Path], d: DataConf, tok: "PreTrainedTokenizerBase") -> int:
    """Tokens of the text (format=text) or pairs that teach (prompt_completion), read only as far
    as one block: the rows were checked before (_read_fully)."""
    from pipeline.rank import corpus

    need = d.seq_len if d.format == DataFormat.text else 1
    have = 0
    for path in paths:
        for _, row in rows(path):
            if d.format == DataFormat.text:
                have += len(corpus.documents(tok, [row[d.text_field]])[0])
            else:
                example = corpus.pair(tok, row[d.prompt_field], row[d.completion_field], d.seq_len, 0)
                have += corpus.teaches(example)
            if have >= need:
                return have
    return have


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")


_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape decodes them
_SUFFIXES = "use .jsonl, .json, .csv, .parquet or .txt files, or a dataset dir saved with save_to_disk"
_FORMAT_HINT = {
    "text_field": "",
    "prompt_field": ", or data.format=text for plain documents",
    "completion_field": ", or data.format=text for plain documents",
}
