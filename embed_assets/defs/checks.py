"""Asset checks. `embedding_config_valid` is global (configuration is not per recording) and blocking on
the first asset, so a misconfigured deployment fails its very first run before any provider call."""

import os

import dagster as dg

from embed_assets.defs.assets import transcript_chunks
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.database import redact_url
from embed_assets.lib.health import check_configuration


def _probe(embedder: EmbedderResource) -> None:
    client = embedder.build(batch_size=1, max_concurrency=1, request_timeout_s=30, max_attempts=2, backoff_base_s=1)
    try:
        client.embed(["configuration probe"], [2])
    finally:
        client.close()


@dg.asset_check(asset=transcript_chunks, blocking=True)
def embedding_config_valid(store: VectorStoreResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
    """Provider and model known, API key present (and accepted, when EMBED_PROBE=1 asks for one live
    request), database reachable, pgvector installed, table dimension == model dimension, no other model's
    vectors mixed in. Blocking: when it fails, chunk_embeddings does not start and nothing is paid for."""
    probe = os.environ.get("EMBED_PROBE", "").strip().lower() in ("1", "true", "yes")
    report = check_configuration(
        embedder.spec,
        store.url,
        embedder.api_key_present(),
        (lambda: _probe(embedder)) if probe else None,
    )
    metadata: dict[str, object] = {k: str(v) for k, v in report.facts.items()}
    if store._url:
        metadata["database_url"] = redact_url(store._url)
    metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in report.problems) or "none")
    return dg.AssetCheckResult(
        passed=report.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(report.problems) or "configuration valid",
        metadata=metadata,
    )
