"""What every embedder returns, and the counters that become Dagster metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from embed_assets.lib.models import ModelSpec

Progress = Callable[[int], None]  # called with the number of inputs just embedded


@dataclass
class EmbedResult:
    vectors: np.ndarray  # (n, dimension) float32, in input order
    requests: int = 0  # provider HTTP requests sent, retries included (0 for the local model)
    retries: int = 0
    tokens: int = 0  # input tokens as billed (usage.prompt_tokens when the provider reports it)
    seconds: float = 0.0
    backoff_s: float = 0.0  # time spent waiting between retries (Retry-After or backoff)
    rate_limited: int = 0  # 429s with a wait (flow control: they do not use up the request's attempts)
    paced_s: float = 0.0  # time requests waited for the provider's reported budget before being sent


@dataclass
class Answered:
    """What a failed ``embed`` call had already been answered, and billed, before one of its requests failed: the
    vectors of those inputs are paid for and must not be bought again (lib/vector_cache.py keeps them)."""

    indexes: list[int]  # input positions answered, in input order
    result: EmbedResult  # vectors of all inputs (only ``indexes`` rows are valid), requests sent, tokens billed


def attach_answered(error: BaseException, answered: Answered) -> None:
    """Carry ``answered`` on the error that ends the call, for the caller to keep (``answered_before``)."""
    error.embed_answered = answered  # type: ignore[attr-defined]


def answered_before(error: BaseException) -> Answered | None:
    return getattr(error, "embed_answered", None)


class Embedder(Protocol):
    spec: ModelSpec

    def embed(self, texts: list[str], token_counts: list[int], progress: Progress | None = None) -> EmbedResult:
        """Embed ``texts`` (with their exact token counts, for request packing) in order."""
        ...

    def close(self) -> None: ...


def texts_function(embedder: Embedder) -> Callable[[list[str]], np.ndarray]:
    """``texts -> vectors`` with exact token counts: for queries and verification samples, not bulk work."""
    from embed_assets.lib.tokenizers import token_counter

    # The tokenizer loads on the first call (its files are cached per process): a text-only search needs none.
    return lambda texts: embedder.embed(texts, token_counter(embedder.spec.tokenizer).count_many(texts)).vectors


class LazyEmbedder:
    """An embedder built on its first ``embed`` call: a step whose recordings are all unchanged sends
    nothing, so it need not import the provider's client (~0.5 s per run process for `openai`) or load a
    model. Building errors (a missing key) surface on that first call, as the step's failure."""

    def __init__(self, spec: ModelSpec, build: Callable[[], Embedder]) -> None:
        self.spec = spec
        self._build = build
        self._embedder: Embedder | None = None

    def embed(self, texts: list[str], token_counts: list[int], progress: Progress | None = None) -> EmbedResult:
        if self._embedder is None:
            self._embedder = self._build()
        return self._embedder.embed(texts, token_counts, progress)

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
