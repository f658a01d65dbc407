"""The user's data (data=files), read through the datasets library and tokenized once per dataset
and tokenizer into a cache on disk that every rank, and every later point of a sweep, loads.

Text: documents tokenized, an EOS after each, packed into seq_len blocks (labels = inputs).
Prompt/completion: one example per pair, padded to seq_len; the labels of the prompt and the
padding are -100, so the loss is on the completion only.
"""

import hashlib
import json
import os
import shutil
from itertools import groupby
from pathlib import Path

import datasets
from filelock import FileLock
from transformers import PreTrainedTokenizerBase

from pipeline.config import READERS, Config, DataFormat, is_saved_dataset

IGNORE = -100  # the label HF's losses skip
VERSION = 1  # of the tokenized layout: a change here makes earlier caches stale


def prepare(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The tokenized dataset dir (splits train and, if any, eval), built here unless cached. A file
    lock makes concurrent starts (a sweep's Slurm jobs, a job's tasks) tokenize once."""
    root = Path(cfg.outputs_dir).absolute() / "cache" / "tokenized"
    root.mkdir(parents=True, exist_ok=True)
    target = root / _key(cfg, tokenizer)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            print(f"data: {target} (tokenized before)", flush=True)
            return target
        for left in root.glob(f"{target.name}.partial-*"):  # of a start that died writing it
            shutil.rmtree(left, ignore_errors=True)
        splits = _tokenize(cfg, tokenizer)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        splits.save_to_disk(str(partial))
        partial.rename(target)
    counts = ", ".join(f"{len(split):,} {name}" for name, split in splits.items())
    print(f"data: tokenized {counts} sequences of {cfg.data.seq_len} tokens -> {target}", flush=True)
    return target


def load(path: str | Path) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, eval) from a prepared dir; memory-mapped, so N ranks share the pages."""
    splits = datasets.load_from_disk(str(path))
    return splits["train"], splits.get("eval")


def read(paths: list[Path], cache: Path, columns: list[str]) -> datasets.Dataset:
    """The raw examples of data files and datasets saved with save_to_disk, each read by its own
    kind's reader (a list may mix .jsonl and .csv), cut to the columns used and cast to one string
    type (csv's is large_string, json's string) so that they concatenate. The datasets library's Arrow
    copy of raw files goes to cache (under outputs_dir), not to the home directory
    (~/.cache/huggingface/datasets, small on many clusters)."""
    text = datasets.Features({column: datasets.Value("string") for column in columns})
    parts = [
        _read_kind(kind, list(same), cache).select_columns(columns)
        for kind, same in groupby(paths, key=_kind)
    ]
    return datasets.concatenate_datasets(
        [part if part.features == text else part.cast(text) for part in parts]
    )


def _kind(path: Path) -> str:
    """The datasets builder that reads the file (READERS), or "saved" for a save_to_disk dir."""
    return "saved" if is_saved_dataset(path) else READERS[path.suffix]


def _read_kind(kind: str, paths: list[Path], cache: Path) -> datasets.Dataset:
    if kind == "saved":
        return datasets.concatenate_datasets([load_saved(p) for p in paths])
    files = [str(p) for p in paths]
    return datasets.load_dataset(kind, data_files=files, split="train", cache_dir=str(cache))


def load_saved(path: Path) -> datasets.Dataset:
    """A dataset saved with save_to_disk: itself, or the train split of a saved DatasetDict."""
    saved = datasets.load_from_disk(str(path))
    return saved["train"] if isinstance(saved, datasets.DatasetDict) else saved


def _tokenize(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> datasets.DatasetDict:
    d = cfg.data
    cache = Path(cfg.outputs_dir).absolute() / "cache" / "datasets"
    columns = list(d.columns.values())
    train = read(d.train_paths, cache, columns)
    raw = {"train": train}
    if d.eval_files is not None:
        raw["eval"] = read(d.eval_paths, cache, columns)
    elif d.eval_fraction > 0:
        held = train.train_test_split(test_size=d.eval_fraction, seed=cfg.trainer.seed)
        raw = {"train": held["train"], "eval": held["test"]}
    encode = _packed if d.format == DataFormat.text else _pairs
    return datasets.DatasetDict({name: encode(split, cfg, tokenizer) for name, split in raw.items()})


def _packed(split: datasets.Dataset, cfg: Config, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
    seq_len, field = cfg.data.seq_len, cfg.data.text_field

    def pack(batch: dict) -> dict:
        stream = [token for doc in documents(tokenizer, batch[field]) for token in doc]
        blocks = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
        return {"input_ids": blocks, "labels": blocks}

    return split.map(pack, batched=True, batch_size=1000, remove_columns=split.column_names)


def documents(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Each document's token ids with an EOS after it: the stream that text data packs into blocks."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [ids + eos for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _pairs(split: datasets.Dataset, cfg: Config, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
    d = cfg.data
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    def encode(row: dict) -> dict:
        return pair(tokenizer, row[d.prompt_field], row[d.completion_field], d.seq_len, pad)

    encoded = split.map(encode, remove_columns=split.column_names)
    return encoded.filter(teaches)


def teaches(example: dict) -> bool:
    """A completion cut off whole by seq_len leaves nothing to learn (and a NaN loss)."""
    return any(label != IGNORE for label in example["labels"])


def pair(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, seq_len: int, pad: int) -> dict:
    """One prompt/completion example, seq_len long: labels only on the completion (and its EOS)."""
    asked = tokenizer(prompt)["input_ids"]
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer = answer + [tokenizer.eos_token_id]
    ids = (asked + answer)[:seq_len]
    labels = ([IGNORE] * len(asked) + answer)[:seq_len]
    fill = seq_len - len(ids)
    return {
        "input_ids": ids + [pad] * fill,
        "attention_mask": [1] * len(ids) + [0] * fill,
        "labels": labels + [IGNORE] * fill,
    }


def _key(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> str:
    """What the tokenized data depends on: the files (path, size, time), the tokenizer, the settings."""
    d = cfg.data
    files = [_stamp(p) for p in d.train_paths + d.eval_paths]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    settings = [d.format.value, d.text_field, d.prompt_field, d.completion_field, d.seq_len, d.eval_fraction]
    split_seed = cfg.trainer.seed if d.eval_fraction else None
    what = json.dumps([VERSION, files, vocab, specials, settings, split_seed])
    return hashlib.sha256(what.encode()).hexdigest()[:20]


def _stamp(path: Path) -> list:
    found = sorted(path.rglob("*")) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in found if p.is_file()]
