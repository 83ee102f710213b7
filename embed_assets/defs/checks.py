"""Asset checks, all global (each docstring says why). `embedding_config_valid` is blocking on the first
asset, so a misconfigured deployment fails its very first run before any provider call."""

import os
from typing import Any

import dagster as dg

from embed_assets.defs.assets import chunk_embeddings, transcript_chunks
from embed_assets.defs.health import failed_keys, failure_state
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.db.connection import redact_url
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.health.alert_settings import alert_settings
from embed_assets.lib.health.backlog import backlog
from embed_assets.lib.health.channels import reachability
from embed_assets.lib.health.config import ConfigReport, check_configuration
from embed_assets.lib.health.incidents import incident_starts
from embed_assets.lib.health.integrity import check_integrity
from embed_assets.lib.health.status import Thresholds, db_status, last_errors, verdict
from embed_assets.lib.models.registry import coverage
from embed_assets.lib.settings import automation_settings
from embed_assets.lib.sources.discovery import source_hashes
from embed_assets.lib.sources.removal_guard import held_removals


def _probe(embedder: EmbedderResource) -> None:
    client = embedder.build(batch_size=1, max_concurrency=1, request_timeout_s=30, max_attempts=2, backoff_base_s=1)
    try:
        client.embed(["configuration probe"], [2])
    finally:
        client.close()


def configuration_report(
    store: VectorStoreResource, embedder: EmbedderResource, probe: bool, alerts: bool = False
) -> ConfigReport:
    """The one configuration check: the blocking asset check below and the `embed-assets check` preflight.
    ``alerts``: also probe the alert channels (the preflight does; the blocking check does not, since an alert
    channel being down must never stop embedding)."""
    return check_configuration(
        embedder.spec,
        store.url,
        embedder.api_key_present(),
        (lambda: _probe(embedder)) if probe else None,
        store.source,
        (lambda: reachability(alert_settings())) if alerts else None,
    )


@dg.asset_check(asset=transcript_chunks, blocking=True)
def embedding_config_valid(store: VectorStoreResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
    """Provider and model known, API key present for every registered openai model (and accepted, when
    EMBED_PROBE=1 asks for one live request), the source readable (EMBED_SOURCE), database reachable, pgvector
    installed, every registered model servable here with its table constrained to its dimension, one model
    active. A configured model that is not registered is a warning (the registry rules; `embed-assets model
    shadow` moves to it). Blocking: when it fails, chunk_embeddings does not start and nothing is paid for."""
    probe = os.environ.get("EMBED_PROBE", "").strip().lower() in ("1", "true", "yes")
    report = configuration_report(store, embedder, probe)
    metadata: dict[str, object] = {k: str(v) for k, v in report.facts.items()}
    if store._url:
        metadata["database_url"] = redact_url(store._url)
    metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in report.problems) or "none")
    if report.warnings:
        metadata["warnings"] = dg.MetadataValue.md("\n".join(f"- {w}" for w in report.warnings))
    return dg.AssetCheckResult(
        passed=report.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(report.problems)
        or ("configuration valid" + (f" (warning: {'; '.join(report.warnings)})" if report.warnings else "")),
        metadata=metadata,
    )


def source_description(store: VectorStoreResource) -> str:
    """Where transcripts come from, with any password masked (status, metadata, the UI)."""
    try:
        source = store.source()
    except ConfigError as e:
        return f"EMBED_SOURCE is unusable: {e}"
    return source.describe() if source else "project tables (recordings, transcript_segments)"


def pipeline_health(
    instance: dg.DagsterInstance, store: VectorStoreResource, model_id: str, count_partitions: bool = True
) -> dict[str, Any]:
    """Everything `completion_rate` and `embed-assets status` report, computed once, the same way. Its cost does not
    grow with the corpus beyond SQL aggregates (the completion check runs after every run, issue 33 item 10):
    Dagster is asked for its FAILED partitions only (`failed_keys`), and run history for theirs only.
    ``count_partitions``: also count the registered partitions (`status`; this one lists them all)."""
    settings = automation_settings()
    failed = failed_keys(instance)
    with store.connect() as conn:
        db = db_status(conn, model_id)
        hashes = source_hashes(conn, failed)
        state = failure_state(
            instance,
            failed,
            hashes,
            settings.small_batch_attempts,
            lambda failed: incident_starts(conn, failed),
            known_failed=True,
        )
        errors = last_errors(conn, model_id, state.all_failed[:50])
        models = {
            c.model_id: c.as_dict()
            for c in coverage(conn, {model_id: (db.recordings, db.embedded_current, db.vectors)})
        }
        thresholds = Thresholds(in_flight_grace_s=settings.in_flight_grace_s)
        work = backlog(conn, model_id, state.dead_lettered, thresholds.in_flight_grace_s, state.failed)
        held = held_removals(conn)
    level, reasons = verdict(db, len(state.failed), len(state.dead_lettered), thresholds, work, held)
    return {
        "source": source_description(store),
        "db": db,
        "partitions": len(instance.get_dynamic_partitions(recordings_partitions.name)) if count_partitions else None,
        "failed": state.failed,
        "dead_lettered": state.dead_lettered,
        "attempts": state.attempts,
        "errors": errors,
        "verdict": level,
        "reasons": reasons,
        "models": models,
    }


@dg.asset_check(asset=chunk_embeddings)
def completion_rate(
    context: dg.AssetCheckExecutionContext, store: VectorStoreResource, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    """Share of recordings whose current transcript is embedded by the active model (and each shadow model's, in
    the metadata), failed and dead-lettered recordings, and
    embedding activity while work is pending, against DESIGN.md's thresholds (completion >= 99%; dead
    letters 0-20 healthy, 21-50 WARN, > 50 ERROR; nothing embedded for 1 h / 6 h while work is pending:
    WARN / ERROR). Global, not per partition: a rate is a property of the whole set."""
    models = store.models(embedder.spec())
    h = pipeline_health(context.instance, store, models[0].model_id, count_partitions=False)
    db = h["db"]
    dead = h["dead_lettered"]
    return dg.AssetCheckResult(
        passed=h["verdict"] == "healthy",
        severity=dg.AssetCheckSeverity.ERROR if h["verdict"] == "critical" else dg.AssetCheckSeverity.WARN,
        description="; ".join(h["reasons"]) or f"healthy: {db.completion_rate:.2%} complete",
        metadata={
            "completion_rate": dg.MetadataValue.float(round(db.completion_rate, 6)),
            "recordings": db.recordings,
            "embedded": db.embedded_current,
            "never_embedded": db.never_embedded,
            "stale": db.stale,
            "failed": len(h["failed"]),
            "dead_lettered": len(dead),
            "vectors_last_hour": db.vectors_last_hour,
            "minutes_since_last_embedding": round((db.seconds_since_last_embedding or 0) / 60, 1),
            "unreadable_source_rows": db.unreadable_source_rows,
            "source": h["source"],
            "model": models[0].model_id,
            **({"models": dg.MetadataValue.json(h["models"])} if len(models) > 1 else {}),
            "dead_lettered_recordings": dg.MetadataValue.json(
                {k: h["errors"].get(k, {}).get("error", "see the run in the UI") for k in dead[:50]}
            ),
        },
    )


def run_recordings(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The recordings of the run a check evaluates in (its partition or partition range), or None outside
    a partitioned run (then every recording)."""
    try:
        tags = context.run.tags
    except dg.DagsterError:  # invoked directly, not in a run (DagsterInvalidPropertyError)
        return None
    if key := tags.get("dagster/partition"):
        return [key]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if not (start and end):
        return None
    keys = context.instance.get_dynamic_partitions(recordings_partitions.name)
    if start not in keys or end not in keys:
        return None
    return keys[keys.index(start) : keys.index(end) + 1]


@dg.asset_check(asset=chunk_embeddings)
def chunk_integrity(
    context: dg.AssetCheckExecutionContext, store: VectorStoreResource, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    """For every registered model: every chunk of every embedded recording has exactly one vector of the model (for its
    current text), no vector is left without its chunk (changed or deleted recordings), no zero vectors,
    chunk rows match their plan, and the chunks cover every segment without gaps. In a run, over the run's
    recordings (a run can only break what it wrote, and a whole-table check in every run grows with the
    corpus: `make bench`); launched on its own, over every recording."""
    scope = run_recordings(context)
    models = store.models(embedder.spec())
    with store.connect() as conn:
        results = {m.model_id: check_integrity(conn, m.model_id, scope) for m in models}
    result = results[models[0].model_id]
    bad = {m: r for m, r in results.items() if not r.ok}
    description = (
        "consistent"
        if not bad
        else "; ".join(f"{m}: inconsistent recordings, e.g. {', '.join(r.examples)}" for m, r in bad.items())
    )
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description + ("" if scope is None else f" ({len(scope)} recording(s) of this run checked)"),
        metadata={
            **{k: (dg.MetadataValue.json(v) if isinstance(v, list) else v) for k, v in result.as_dict().items()},
            "model": models[0].model_id,
            **(
                {"models": dg.MetadataValue.json({m: r.as_dict() for m, r in results.items()})}
                if len(models) > 1
                else {}
            ),
            "scope": "all recordings" if scope is None else f"{len(scope)} recording(s) of this run",
        },
    )
