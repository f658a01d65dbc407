"""Training data: the corpus shipped in the repo as byte tokens, random tokens (benchmarks), or
the user's own files (corpus.py), tokenized once before any rank starts."""

from pathlib import Path

import torch
from torch.utils.data import Dataset

from pipeline.config import PROJECT_ROOT, Config, DataConf, DataSource


class TokenBlocks(Dataset):
    """Fixed-length blocks of token ids; labels are the inputs (the model shifts them)."""

    def __init__(self, tokens: torch.Tensor, seq_len: int) -> None:
        n = len(tokens) // seq_len
        self.blocks = tokens[: n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def prepare(cfg: Config) -> str | None:
    """The user's files tokenized (cached on disk: once per dataset and tokenizer); the built-in
    sources need nothing before the ranks start."""
    if cfg.data.source != DataSource.files:
        return None
    from pipeline.rank import corpus, tokenizer

    return str(corpus.prepare(cfg, tokenizer.load(cfg)))


def splits(cfg: Config, vocab: int, min_blocks: int, prepared: str | None) -> tuple[Dataset, Dataset | None]:
    """(train, eval) for a rank: the prepared files, or a built-in source (no eval set)."""
    if prepared is not None:
        from pipeline.rank import corpus

        return corpus.load(prepared)
    return builtin(cfg.data, vocab, min_blocks), None


def builtin(data: DataConf, vocab: int, min_blocks: int) -> TokenBlocks:
    """At least min_blocks blocks (the corpus repeats if the run needs more than it holds)."""
    if data.source == DataSource.random:
        g = torch.Generator().manual_seed(0)
        return TokenBlocks(torch.randint(0, vocab, (min_blocks * data.seq_len,), generator=g), data.seq_len)
    path = Path(data.path) if Path(data.path).is_absolute() else PROJECT_ROOT / data.path
    tokens = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()
    repeats = -(-min_blocks * data.seq_len // len(tokens))
    return TokenBlocks(tokens.repeat(max(1, repeats)), data.seq_len)
