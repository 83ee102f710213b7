"""`embed-assets adopt`: connections, the stated model's embedder for the verification sample, progress."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from embed_assets.lib.db.connection import connect, redact_url
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.models import ModelSpec, resolve_model
from embed_assets.lib.settings import load_settings
from embed_assets.lib.sources.adopt import AdoptReport, adopt


def adopt_url(url_env: str | None) -> tuple[str, str]:
    """(URL, where it came from) of the database holding the old table: the variable named by --url-env, else
    the source file's database (EMBED_SOURCE), else the vector store's own."""
    from embed_assets.defs.resources import VectorStoreResource

    if url_env:
        url = os.environ.get(url_env, "").strip()
        if not url:
            raise ConfigError(f"--url-env {url_env}: the variable is not set; export it with the old database's URL")
        return url, url_env
    store = VectorStoreResource()
    source = store.source()
    if source is not None and not source.same_database:
        return source.definition.database_url or "", f"database_url in {source.definition.path}"
    return store.url(), "EMBED_DATABASE_URL"


def stated_model(model: str, dimensions: int | None) -> ModelSpec:
    """The model the user says the vectors were made with, served by the configured provider (to verify them)."""
    provider = load_settings().provider
    try:
        return resolve_model(provider, model, dimensions)
    except ConfigError as e:
        raise ConfigError(
            f"cannot verify vectors of {model!r} with EMBED_PROVIDER={provider}: {e}. State the model with --model "
            "(and --dimensions when they were shortened), and configure the provider that serves it"
        ) from None


def sample_embedder(spec: ModelSpec) -> Callable[[list[str]], np.ndarray]:
    from embed_assets.defs.resources import EmbedderResource

    return EmbedderResource(provider=spec.provider, model=spec.name, dimensions=spec.dimension).texts_embedder()


def run_adopt(
    table: str,
    model: str,
    dimensions: int | None,
    text_column: str,
    embedding_column: str,
    url_env: str | None,
    sample: int,
    progress: Callable[[int], None],
) -> tuple[AdoptReport, ModelSpec, str]:
    from embed_assets.defs.resources import VectorStoreResource

    spec = stated_model(model, dimensions)
    url, origin = adopt_url(url_env)
    store = VectorStoreResource()
    store.ensure_schema(spec.dimension)
    with connect(url, setting=origin) as source, store.connect() as target:
        report = adopt(
            source,
            target,
            table=table,
            text_column=text_column,
            embedding_column=embedding_column,
            spec=spec,
            embed=sample_embedder(spec),
            origin=f"{table} @ {redact_url(url)}",
            sample_size=sample,
            progress=progress,
        )
    return report, spec, redact_url(url)
