"""Resources: the vector store and the embedding provider. Both read the environment when a run starts
(never at import), and neither puts a URL password or an API key into config, logs or metadata."""

import os
from collections.abc import Callable

import dagster as dg
import numpy as np
import psycopg
from pydantic import PrivateAttr, SecretStr

from embed_assets.lib.db.connection import connect, vector_database_url
from embed_assets.lib.db.migrations import may_create_schema, migrate
from embed_assets.lib.embedders import Embedder, LocalEmbedderConfig, OpenAIEmbedderConfig
from embed_assets.lib.embedders.base import LazyEmbedder, texts_function
from embed_assets.lib.models import ModelSpec, resolve_model
from embed_assets.lib.models.registry import Registered, ensure_models
from embed_assets.lib.settings import DEFAULT_MODELS, load_settings
from embed_assets.lib.sources.definition import configured_definition
from embed_assets.lib.sources.external import ExternalSource


class VectorStoreResource(dg.ConfigurableResource):
    """Postgres + pgvector: EMBED_DATABASE_URL, or the embedded server under EMBED_HOME when unset; and where
    its transcripts come from: the project's own tables, or the user's tables named by EMBED_SOURCE."""

    _url: str | None = PrivateAttr(default=None)

    def url(self) -> str:
        if self._url is None:
            self._url = vector_database_url()
        return self._url

    def connect(self) -> psycopg.Connection:
        return connect(self.url())

    def source(self) -> ExternalSource | None:
        """The source definition named by EMBED_SOURCE (read now, not at import), or None: the project's tables."""
        definition = configured_definition()
        return ExternalSource(definition, self.url()) if definition is not None else None

    def ensure_schema(self, dimension: int) -> list[int]:
        with self.connect() as conn:
            return migrate(conn, dimension)

    def models(self, configured: ModelSpec) -> list[Registered]:
        """The models this database keeps vectors for, the active one first (lib/models/registry.py); on a fresh
        install (or one holding no vector yet) ``configured`` is registered and made active first."""
        with self.connect() as conn:
            migrate(conn, configured.dimension, create_schema=may_create_schema())
            return ensure_models(conn, configured)


class EmbedderResource(dg.ConfigurableResource):
    """The embedding provider. Empty fields fall back to EMBED_PROVIDER / EMBED_MODEL / EMBED_DIMENSIONS;
    the key comes from OPENAI_API_KEY in the run worker's environment and is never config."""

    provider: str = ""
    model: str = ""
    dimensions: int = 0

    def resolved(self) -> tuple[str, str, int | None]:
        s = load_settings()
        provider = self.provider or s.provider
        model = self.model or (s.model if not self.provider or self.provider == s.provider else "")
        model = model or DEFAULT_MODELS.get(provider, "")
        return provider, model, self.dimensions or s.dimensions

    def spec(self) -> ModelSpec:
        return resolve_model(*self.resolved())

    def api_key_present(self) -> bool:
        return bool(os.environ.get("OPENAI_API_KEY", "").strip())

    def texts_embedder(self, spec: ModelSpec | None = None) -> Callable[[list[str]], np.ndarray]:
        """A function embedding a few texts (search queries, `adopt`'s verification sample) with ``spec`` (default:
        the configured model), on a client with short timeouts built on the first call (a text-only search builds
        none) and kept after."""
        spec = spec or self.spec()
        return texts_function(
            LazyEmbedder(
                spec,
                lambda: self.build(
                    batch_size=64,
                    max_concurrency=1,
                    request_timeout_s=30,
                    max_attempts=4,
                    backoff_base_s=1,
                    spec=spec,
                ),
            )
        )

    def build(
        self,
        *,
        batch_size: int,
        max_concurrency: int,
        request_timeout_s: float,
        max_attempts: int,
        backoff_base_s: float,
        spec: ModelSpec | None = None,
    ) -> Embedder:
        """A client for ``spec`` (a registered model), or for the configured model."""
        if spec is not None:
            provider, model, dimensions = spec.provider, spec.name, spec.dimension
        else:
            provider, model, dimensions = self.resolved()
        if provider == "local":
            return LocalEmbedderConfig(model=model, batch_size=min(batch_size, 64)).build()
        resolve_model(provider, model, dimensions)  # a clear ConfigError before any client exists
        key = os.environ.get("OPENAI_API_KEY")
        return OpenAIEmbedderConfig(
            model=model,
            dimensions=dimensions,
            base_url=load_settings().openai_base_url,
            max_inputs_per_request=min(batch_size, 2048),
            max_concurrency=max_concurrency,
            request_timeout_s=request_timeout_s,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
        ).build(SecretStr(key) if key else None)
