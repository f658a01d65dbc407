"""Checks of the user's own model and data (model=hf, data=files) before anything starts: each
problem is one ConfigError naming the key and the fix. Cheap: the model's config and tokenizer
files and the first row of each data file are read, never the weights or the whole set."""

from functools import lru_cache
from pathlib import Path

from pipeline.config import READERS, Config, DataFormat, DataSource, ModelSource, is_saved_dataset
from pipeline.errors import ConfigError

WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def check(cfg: Config) -> None:
    if cfg.model.source == ModelSource.pretrained:
        _check_model(cfg)
    if cfg.data.source == DataSource.files:
        _check_data(cfg)


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
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoTokenizer

    name = cfg.model.name_or_path
    config = pretrained_config(name)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(
            "model.name_or_path",
            f"{name} holds a {config.model_type} model, which is not a causal LM",
            "use a model that AutoModelForCausalLM loads (Llama, GPT-2, Qwen2, ...)",
        )
    if Path(name).is_dir() and not any(any(Path(name).glob(pattern)) for pattern in WEIGHTS):
        raise ConfigError(
            "model.name_or_path", f"no weights in {name}", "save the model there with save_pretrained"
        )
    try:
        AutoTokenizer.from_pretrained(name)
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


def _check_data(cfg: Config) -> None:
    d = cfg.data
    for key in ("train_files", "eval_files"):
        paths = getattr(d, key.replace("files", "paths"))
        for path in paths:
            _check_file(f"data.{key}", path)
        if paths:
            _check_columns(f"data.{key}", paths, cfg)


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


def _check_columns(key: str, paths: list[Path], cfg: Config) -> None:
    """The fields the format reads are columns of the data (its first row)."""
    d = cfg.data
    row = first_row(paths)
    if row is None:
        raise ConfigError(key, f"{paths[0]} holds no rows", "give a file with training data in it")
    fields = ["text_field"] if d.format == DataFormat.text else ["prompt_field", "completion_field"]
    for field in fields:
        column = getattr(d, field)
        if column not in row:
            raise ConfigError(
                f"data.{field}",
                f"'{column}' is not a column of {paths[0].name} (columns: {', '.join(row)})",
                f"set data.{field} to one of {', '.join(row)}" + _FORMAT_HINT[d.format],
            )


def first_row(paths: list[Path]) -> dict | None:
    """The first example, read without loading the whole set (streamed)."""
    import datasets

    if paths[0].is_dir():
        saved = datasets.load_from_disk(str(paths[0]))
        split = saved["train"] if isinstance(saved, datasets.DatasetDict) else saved
        return split[0] if len(split) else None
    builder = READERS[paths[0].suffix]
    stream = datasets.load_dataset(builder, data_files=[str(paths[0])], split="train", streaming=True)
    return next(iter(stream), None)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")


_SUFFIXES = "use .jsonl, .json, .csv, .parquet or .txt files, or a dataset dir saved with save_to_disk"
_FORMAT_HINT = {
    DataFormat.text: "",
    DataFormat.prompt_completion: ", or data.format=text for plain documents",
}
