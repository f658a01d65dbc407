"""The tokenizer a point trains with: the pretrained model's own, or byte level (256 ids, the
byte values) for a model built from sizes. Both are Hugging Face tokenizers, saved beside the
trained model so that `python -m pipeline.generate` can read any run's model."""

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from pipeline.config import Config, ModelSource
from pipeline.config import Tokenizer as TokenizerChoice

BYTE_VOCAB = 256


def load(cfg: Config) -> PreTrainedTokenizerBase:
    if cfg.data.tokenizer == TokenizerChoice.auto and cfg.model.source == ModelSource.pretrained:
        return pretrained(cfg.model.name_or_path)
    return byte_level()


@lru_cache(maxsize=4)
def pretrained(name_or_path: str) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, loaded once per process: the checks of every point of a sweep,
    and the data's tokenization after them, ask for it again."""
    return AutoTokenizer.from_pretrained(name_or_path)


@lru_cache(maxsize=1)
def byte_level() -> PreTrainedTokenizerFast:
    """Token id = byte value, as data.py's byte corpus has it: GPT-2's byte-to-unicode alphabet as
    a merge-free BPE vocabulary, with the byte-level pre-tokenizer and decoder (exact round trip)."""
    vocab = {ch: byte for byte, ch in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)
