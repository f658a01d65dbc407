"""Training data: the corpus shipped in the repo as byte tokens, or random tokens (benchmarks)."""

from pathlib import Path

import torch
from torch.utils.data import Dataset

from pipeline.config import DataConf, DataSource, Tokenizer

BYTE_VOCAB = 256
ROOT = Path(__file__).resolve().parent.parent


class TokenBlocks(Dataset):
    """Fixed-length blocks of token ids; labels are the inputs (the model shifts them)."""

    def __init__(self, tokens: torch.Tensor, seq_len: int) -> None:
        n = len(tokens) // seq_len
        self.blocks = tokens[: n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def vocab_size(data: DataConf) -> int:
    return {Tokenizer.byte: BYTE_VOCAB}[data.tokenizer]


def dataset(data: DataConf, vocab: int, min_blocks: int) -> TokenBlocks:
    """At least min_blocks blocks (the corpus repeats if the run needs more than it holds)."""
    if data.source == DataSource.random:
        g = torch.Generator().manual_seed(0)
        return TokenBlocks(torch.randint(0, vocab, (min_blocks * data.seq_len,), generator=g), data.seq_len)
    path = Path(data.path) if Path(data.path).is_absolute() else ROOT / data.path
    tokens = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()
    repeats = -(-min_blocks * data.seq_len // len(tokens))
    return TokenBlocks(tokens.repeat(max(1, repeats)), data.seq_len)
