"""`embed-assets model ...`: the registry's commands with their connections, embedders and progress."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from embed_assets.lib.errors import ConfigError, InputError
from embed_assets.lib.models import ModelSpec, resolve_model
from embed_assets.lib.models.compare import Comparison, compare, drawn_queries
from embed_assets.lib.models.registry import active, find
from embed_assets.lib.models.specs import provider_of
from embed_assets.lib.search.evaluate import load_queries
from embed_assets.lib.settings import load_settings


def named_model(name: str, dimensions: int | None, provider: str | None) -> ModelSpec:
    """The spec of a model named on the command line: its provider is --provider, else the one that serves the
    name here (OpenAI's models: openai; the bundled one: local), else EMBED_PROVIDER."""
    return resolve_model(provider or provider_of(name) or load_settings().provider, name, dimensions)


def texts_embedder(spec: ModelSpec) -> Callable[[list[str]], np.ndarray]:
    """Query texts embedded with ``spec`` (`search`, `model compare`), without the model's loading bars."""
    import os

    from embed_assets.console.run import QUIET_ENV
    from embed_assets.defs.resources import EmbedderResource

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    return EmbedderResource().texts_embedder(spec)


def run_compare(
    conn, model_id: str, queries: Path | None, n: int, k: int, progress: Callable[[str], None]
) -> Comparison:
    current = active(conn)
    candidate = find(conn, model_id)
    if current is None:
        raise ConfigError("no model is active; `embed-assets model activate MODEL` first")
    if candidate is None:
        raise ConfigError(f"{model_id} is not registered; `embed-assets model shadow` it first")
    if candidate.active:
        raise ConfigError(f"{model_id} is the active model; compare a shadow model with it")
    if queries is not None:
        if not queries.is_file():
            raise InputError(f"no such file: {queries} (labelled questions, one JSON object per line)")
        asked = load_queries(queries)
    else:
        asked = drawn_queries(conn, current, n)
    return compare(
        conn,
        current,
        candidate,
        asked,
        texts_embedder(current.spec),
        texts_embedder(candidate.spec),
        labelled=queries is not None,
        k=k,
        progress=progress,
    )
