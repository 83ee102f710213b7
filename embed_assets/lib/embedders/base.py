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


class Embedder(Protocol):
    spec: ModelSpec

    def embed(self, texts: list[str], token_counts: list[int], progress: Progress | None = None) -> EmbedResult:
        """Embed ``texts`` (with their exact token counts, for request packing) in order."""
        ...

    def close(self) -> None: ...


def texts_function(embedder: Embedder) -> Callable[[list[str]], np.ndarray]:
    """``texts -> vectors`` with exact token counts: for queries and verification samples, not bulk work."""
    from embed_assets.lib.tokenizers import token_counter

    counter = token_counter(embedder.spec.tokenizer)
    return lambda texts: embedder.embed(texts, counter.count_many(texts)).vectors
