"""Run config of the two assets, and the small-batch preset (the same config with other values)."""

from enum import Enum
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import Field

from embed_assets.lib.chunking import ChunkParams
from embed_assets.lib.models import ModelSpec


class ChunkConfig(dg.Config):
    """How transcripts are cut into chunks (changing these re-chunks, and re-embeds changed chunks)."""

    chunk_tokens: int = Field(200, description="Target (and hard maximum) tokens per chunk, by the model's tokenizer.")
    chunk_overlap: int = Field(30, description="Tokens (whole words) repeated from the end of the previous chunk.")

    def params(self, spec: ModelSpec) -> ChunkParams:
        limit = spec.max_input_tokens - 2  # room for the model's own special tokens
        if self.chunk_tokens > limit:
            raise ValueError(
                f"chunk_tokens={self.chunk_tokens} exceeds {spec.name}'s input limit of {limit} tokens "
                f"(longer input is silently truncated by the model); set chunk_tokens <= {limit}"
            )
        return ChunkParams(self.chunk_tokens, self.chunk_overlap)


class Preset(Enum):
    default = "default"
    small_batch = "small_batch"


class EmbedConfig(dg.Config):
    """How vectors are requested from the provider and written to Postgres. `preset: small_batch` (a
    dropdown in the launchpad) replaces every value below with the small-batch preset's."""

    preset: Preset = Field(
        Preset.default,
        description="small_batch: the recovery preset (5 vectors per insert, one request at a time, long "
        "timeouts); it replaces the values below.",
    )
    embed_batch_size: int = Field(256, description="Max inputs per provider request (OpenAI allows 2048).")
    insert_batch_size: int = Field(100, description="Vectors per COPY statement (each under statement_timeout_s).")
    max_concurrency: int = Field(4, description="Provider requests in flight at once, per run.")
    write_concurrency: int = Field(
        1,
        description="Recordings written at once, each on a connection of its own (an HNSW insert keeps a server "
        "core busy). 1: one at a time, on the step's connection. Backfills run up to the embedding_provider pool's "
        "limit of steps at once, each with this many writers; `embed-assets embed` runs one run at a time with 2.",
    )
    request_timeout_s: float = Field(60.0, description="Timeout of one provider request.")
    statement_timeout_s: float = Field(30.0, description="Postgres statement timeout of the vector write session.")
    adaptive_batches: bool = Field(
        True,
        description="Write smaller insert batches (down to 5 rows) when the write latency measured in this step "
        "predicts that insert_batch_size rows would take over a quarter of statement_timeout_s. Off: every "
        "statement has insert_batch_size rows.",
    )
    max_attempts: int = Field(6, description="Attempts per provider request on 429/5xx/timeouts.")
    backoff_base_s: float = Field(1.0, description="Base of the exponential backoff between provider attempts.")
    step_retries: int = Field(2, description="Re-runs of the step after transient failures (database, provider).")
    step_retry_delay_s: float = Field(30.0, description="Base delay of step re-runs; doubles on every retry.")

    def effective(self) -> "EmbedConfig":
        """The values in force: this config, or the small-batch preset's when `preset` asks for it."""
        if self.preset != Preset.small_batch:
            return self
        return EmbedConfig(**{**self._as_config_dict(), **SMALL_BATCH_VALUES, "preset": Preset.small_batch})

    def _as_config_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in type(self).model_fields if k != "preset"}


# The old system's recovery lever, as values of the same config: 5 vectors per insert instead of 100,
# one request at a time, small provider batches and long timeouts. The schedule launches one recording per
# run with it. `presets/small_batch.yaml` holds the same values for `dagster job execute -c` and the UI.
SMALL_BATCH_VALUES: dict[str, Any] = {
    "embed_batch_size": 16,
    "insert_batch_size": 5,
    "max_concurrency": 1,
    "write_concurrency": 1,
    "request_timeout_s": 180.0,
    "statement_timeout_s": 300.0,
    "max_attempts": 8,
    "step_retries": 1,
}
SMALL_BATCH: dict[str, Any] = {"ops": {"chunk_embeddings": {"config": dict(SMALL_BATCH_VALUES)}}}

SMALL_BATCH_YAML = Path(__file__).resolve().parent.parent / "presets" / "small_batch.yaml"


def load_preset(path: Path = SMALL_BATCH_YAML) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())
