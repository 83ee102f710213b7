"""The two partitioned assets. A run may carry many partitions (BackfillPolicy): each recording is
committed on its own, so one bad recording never costs the others their work."""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg

from embed_assets.defs.config import ChunkConfig, EmbedConfig
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.db.connection import Reconnecting
from embed_assets.lib.embedders.base import LazyEmbedder
from embed_assets.lib.errors import (
    ConfigError,
    DatabaseUnavailableError,
    ProviderError,
    RecordingDeletedError,
    TransientProviderError,
)
from embed_assets.lib.models.registry import Registered
from embed_assets.lib.pipeline import (
    ChunkStats,
    ChunkTarget,
    ProviderTotals,
    RecordingEmbedder,
    chunk_models,
    passed_on,
)
from embed_assets.lib.settings import RECORDINGS_PER_RUN
from embed_assets.lib.sources.external import ExternalSource
from embed_assets.lib.sources.formats import UNREADABLE, UnreadableSourceRow
from embed_assets.lib.store import SourceChangedError, record_error

# Many recordings per backfill run, so 1,000 recordings are 10 process launches, not 1,000.
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=RECORDINGS_PER_RUN)
GROUP = "embeddings"


def _fatal(message: str, **metadata: Any) -> dg.Failure:
    """A failure retrying cannot fix (configuration, 4xx): no step retries, no retry storm."""
    return dg.Failure(description=message, metadata=metadata, allow_retries=False)


PROGRESS_EVERY_S = 5.0


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


@dataclass
class Outcome:
    """What a step did with each of its recordings: a result per recording done, an error per recording that
    failed, a reason per recording found deleted (not work, not a failure)."""

    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    transient: bool = False  # some failure may pass on a retry of the step


def _run_each(
    context: dg.AssetExecutionContext,
    keys: Sequence[str],
    work: Callable[[str], Any],
    *,
    on_error: Callable[[str, str], None],
    label: str | None = None,
    into: Outcome | None = None,
) -> Outcome:
    """Run ``work`` per recording. Configuration/provider errors stop everything at once (fatal); any other
    error is this recording's own and the remaining recordings still run; a recording deleted from the source
    meanwhile is "removed": logged, no error recorded, no failure. The caller decides what the outcome makes of
    the step (`_verdict`). ``into``: the outcome to fill, which keeps what was done when a fatal error ends it.

    Progress goes to the run's log at most every PROGRESS_EVERY_S, on each failure or removal and at the end:
    every log line is an event row in Dagster's storage (~15 ms each, `make bench`), so a line per recording
    cost more than the work on short calls."""
    out = into if into is not None else Outcome()
    prefix = f"[{label}] " if label else ""  # a shadow model's lines say which model they are about
    last_progress = time.monotonic()
    for n, key in enumerate(keys, 1):
        try:
            out.results[key] = work(key)
        except ConfigError as e:
            out.failed[key] = str(e)
            raise _fatal(str(e), recording=key) from None
        except ProviderError as e:
            out.failed[key] = str(e)
            on_error(key, str(e))
            raise _fatal(f"{key}: {e}", recording=key) from None
        except RecordingDeletedError as e:
            # Gone from the source: not work and not a failure. Its rows went with it; its partition is deleted by
            # the sensor or `embed-assets embed` (never inside a run, whose partition range may name it).
            out.removed[key] = str(e)
        except UnreadableSourceRow as e:
            out.failed[key] = str(e)  # not retried: nothing to embed until the source row changes
        except psycopg.errors.QueryCanceled as e:
            # A statement timeout: retrying the same batch size would time out again. The small-batch
            # schedule is the lever (DESIGN.md), so fail this recording without step retries.
            out.failed[key] = (
                f"statement timeout while writing vectors ({str(e).strip().splitlines()[0]}); "
                "retry with the small-batch preset (retry_failed_recordings does so automatically)"
            )
        except (TransientProviderError, SourceChangedError, DatabaseUnavailableError, psycopg.OperationalError) as e:
            out.failed[key] = f"{type(e).__name__}: {first_line(e)}"
            out.transient = True
        if key in out.failed:
            on_error(key, out.failed[key])
        now = time.monotonic()
        if key in out.failed or key in out.removed or n == len(keys) or now - last_progress >= PROGRESS_EVERY_S:
            what = "failed" if key in out.failed else "removed, not a failure" if key in out.removed else "done"
            why = f": {out.removed[key]}" if key in out.removed else ""
            context.log.info(f"{prefix}{key}: {what} ({len(out.results)}/{len(keys)} done){why}")
            last_progress = now
    return out


def _verdict(
    context: dg.AssetExecutionContext,
    outcome: Outcome,
    total: int,
    *,
    step_retries: int,
    retry_delay_s: float,
    label: str | None = None,
) -> dg.Failure | dg.RetryRequested | None:
    """What the step makes of its failed recordings: a retry of the step while some failure is transient and
    retries remain, else a failure naming each (and only those), or nothing."""
    if not outcome.failed:
        return None
    summary = "; ".join(f"{k}: {v}" for k, v in outcome.failed.items())
    if outcome.transient and context.retry_number < step_retries:
        delay = retry_delay_s * 2**context.retry_number
        prefix = f"[{label}] " if label else ""
        context.log.warning(
            f"{prefix}{len(outcome.failed)} recording(s) failed transiently, retrying in {delay:.0f}s: {summary}"
        )
        return dg.RetryRequested(max_retries=step_retries, seconds_to_wait=delay)
    return _fatal(
        f"{len(outcome.failed)} of {total} recording(s) failed: {summary}",
        failed_recordings=dg.MetadataValue.json(outcome.failed),
    )


class _Connection(Reconnecting):
    """The step's connection to the vector store (or, with ``source``, to the user's source database)."""

    def __init__(self, store: VectorStoreResource, source: ExternalSource | None = None) -> None:
        super().__init__(source.connect if source is not None else store.connect)


def _recorder(context: dg.AssetExecutionContext, db: _Connection, model_ids: Sequence[str], asset: str):
    def record(key: str, message: str) -> None:
        try:
            unreadable = message.startswith(UNREADABLE)
            for model_id in model_ids:
                record_error(db.get(), key, model_id, asset, message, context.run_id, unreadable=unreadable)
        except (
            psycopg.Error,
            DatabaseUnavailableError,
        ) as e:  # the failure itself still reaches Dagster; say why it isn't kept
            context.log.warning(f"{key}: could not record the error in recording_errors ({type(e).__name__}: {e})")

    return record


@dg.asset(
    partitions_def=recordings_partitions,
    backfill_policy=BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"postgres", "python"},
)
def transcript_chunks(
    context: dg.AssetExecutionContext,
    config: ChunkConfig,
    store: VectorStoreResource,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """Token-aware, speaker-aware chunks of each recording's transcript, with overlap, in the `chunks` table
    (and the `transcript_chunks` view). Only chunks whose text changed are rewritten. Free: no provider calls."""
    try:
        models = store.models(embedder.spec())
        params = [config.params(m.spec) for m in models]
        source = store.source()
    except (ConfigError, ValueError) as e:
        raise _fatal(str(e)) from None
    targets = [ChunkTarget(m.spec, m.chunk_tokenizer) for m in models]
    model_ids = [m.model_id for m in models]
    db = _Connection(store)
    source_db = _Connection(store, source)
    try:
        outcome = _run_each(
            context,
            context.partition_keys,
            lambda key: chunk_models(db.get(), key, targets, params[0], source, source_db.get),
            on_error=_recorder(context, db, model_ids, "transcript_chunks"),
        )
    finally:
        db.close()
        source_db.close()
    verdict = _verdict(context, outcome, len(context.partition_keys), step_retries=2, retry_delay_s=5.0)
    if isinstance(verdict, dg.RetryRequested):
        raise verdict
    # A recording that failed here (its error recorded above) must not hold back the run's others: the step
    # succeeds and chunk_embeddings fails it by name (lib/pipeline.passed_on), so that only its partition is FAILED.
    for key, error in outcome.failed.items():
        context.log.error(f"{key}: {error} (passed on: chunk_embeddings fails this recording)")
    per_key: list[list[ChunkStats]] = list(outcome.results.values())
    unreadable = {k: v for k, v in outcome.failed.items() if v.startswith(UNREADABLE)}
    stats = [s for each in per_key for s in each if s.model == models[0].model_id]
    return dg.MaterializeResult(
        metadata={
            "recordings": len(stats),
            "segments": sum(s.segments for s in stats),
            "chunks": sum(s.chunks for s in stats),
            "tokens": sum(s.tokens for s in stats),
            "chunks_rewritten": sum(s.inserted for s in stats),
            "chunks_unchanged": sum(s.unchanged for s in stats),
            "model": models[0].model_id,
            **_models_label(models),
            **_per_model(
                {
                    m.model_id: {
                        "state": m.state,
                        **_chunk_totals([s for e in per_key for s in e if s.model == m.model_id]),
                    }
                    for m in models
                }
            ),
            "chunk_tokens": params[0].max_tokens,
            "chunk_overlap": params[0].overlap_tokens,
            "seconds": round(sum(s.seconds for each in per_key for s in each), 3),
            "source": source.describe() if source else "project tables (recordings, transcript_segments)",
            "unreadable_source_rows": len(unreadable),
            **({"unreadable": dg.MetadataValue.json(dict(list(unreadable.items())[:50]))} if unreadable else {}),
            **({"failed_recordings": len(outcome.failed)} if outcome.failed else {}),
            **({"removed_recordings": dg.MetadataValue.json(sorted(outcome.removed))} if outcome.removed else {}),
        }
    )


def _models_label(models: Sequence[Registered]) -> dict[str, str]:
    """Which models a materialization belongs to, as the UI shows it (`model` is the active one): with a shadow
    model registered, every model and its state, the active one first."""
    if len(models) < 2:
        return {}
    return {"model_states": ", ".join(f"{m.model_id} ({m.state})" for m in models)}


def _chunk_totals(stats: Sequence[ChunkStats]) -> dict[str, Any]:
    return {
        "chunks": sum(s.chunks for s in stats),
        "tokens": sum(s.tokens for s in stats),
        "chunks_rewritten": sum(s.inserted for s in stats),
    }


def _per_model(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-model figures (model id -> figures), where more than one model is registered (a shadow is being built
    or kept)."""
    return {"models": dg.MetadataValue.json(table)} if len(table) > 1 else {}


@dg.asset(
    deps=[transcript_chunks],
    partitions_def=recordings_partitions,
    backfill_policy=BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"pgvector", "openai"},
    pool="embedding_provider",
)
def chunk_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbedConfig,
    store: VectorStoreResource,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """Vectors for every chunk, in `chunk_vectors` (HNSW cosine index). Chunks whose text and model already
    have a vector are never sent again; the pending chunks of several recordings share provider requests;
    each recording's vectors are replaced in one transaction by binary COPY in statements of
    `insert_batch_size` rows."""
    config = config.effective()
    try:
        models = store.models(embedder.spec())
    except ConfigError as e:
        raise _fatal(str(e)) from None
    except (DatabaseUnavailableError, psycopg.OperationalError) as e:  # a restart, say: as a recording's would be
        if context.retry_number < config.step_retries:
            delay = config.step_retry_delay_s * 2**context.retry_number
            context.log.warning(f"the vector store is unreachable, retrying in {delay:.0f}s: {first_line(e)}")
            raise dg.RetryRequested(max_retries=config.step_retries, seconds_to_wait=delay) from e
        raise
    keys = context.partition_keys
    db = _Connection(store)
    runs: list[_ModelRun] = []
    failures: list[tuple[str, dg.Failure | dg.RetryRequested]] = []
    try:
        # The active model first: whatever a shadow model meets (a missing key, a provider outage), the vectors
        # that search serves are written before it. Each model's recordings fail or succeed on their own.
        for model in models:
            run = _ModelRun(model)
            runs.append(run)
            try:
                _embed_model(context, config, embedder, db, run, keys)
            except dg.Failure as e:  # fatal: configuration, a provider 4xx
                failures.append((model.model_id, e))
                continue
            verdict = _verdict(
                context,
                run.outcome,
                len(keys),
                step_retries=config.step_retries,
                retry_delay_s=config.step_retry_delay_s,
                label=None if model.active else model.model_id,
            )
            if isinstance(verdict, dg.Failure):  # what the provider answered was billed, whatever failed after it
                verdict = dg.Failure(
                    verdict.description, {**verdict.metadata, **_billed(run)}, allow_retries=verdict.allow_retries
                )
            if verdict is not None:
                failures.append((model.model_id, verdict))
    finally:
        db.close()
    if failures:
        _report_partial(context, runs, retrying=all(isinstance(e, dg.RetryRequested) for _, e in failures))
        _raise_failures(failures, len(models))
    results = [(r.model, list(r.outcome.results.values()), r.totals) for r in runs]
    removed = sorted({k for r in runs for k in r.outcome.removed})
    stats = [s for _, model_stats, _ in results for s in model_stats]
    provider = ProviderTotals()
    for _, _, totals in results:
        provider.merge(totals)
    cost = sum(t.cost_usd(m.spec) for m, _, t in results)
    active = results[0][0]
    return dg.MaterializeResult(
        metadata={
            "recordings": len(keys) - len(removed),
            **({"removed_recordings": dg.MetadataValue.json(removed)} if removed else {}),
            "chunks": sum(s.chunks for s in results[0][1]),
            "embedded": sum(s.embedded for s in stats),
            "cache_hits": sum(s.cache_hits for s in stats),
            "tokens": provider.tokens,
            "provider_requests": provider.requests,
            "provider_retries": provider.retries,
            "provider_rate_limited": provider.rate_limited,
            "estimated_cost_usd": round(cost, 6),
            "vectors_written": sum(s.vectors_written for s in stats),
            "vectors_deleted": sum(s.vectors_deleted for s in stats),
            "insert_statements": sum(s.insert_statements for s in stats),
            "embed_seconds": round(provider.seconds, 3),
            "write_seconds": round(sum(s.write_seconds for s in stats), 3),
            "adapted_recordings": dg.MetadataValue.json({s.recording_id: s.adapted for s in stats if s.adapted}),
            "model": active.model_id,
            **_models_label(models),
            "provider": active.spec.provider,
            "dimension": active.spec.dimension,
            **_per_model(
                {
                    m.model_id: {
                        "state": m.state,
                        "dimension": m.spec.dimension,
                        "embedded": sum(s.embedded for s in model_stats),
                        "cache_hits": sum(s.cache_hits for s in model_stats),
                        "vectors_written": sum(s.vectors_written for s in model_stats),
                        "tokens": totals.tokens,
                        "provider_requests": totals.requests,
                        "estimated_cost_usd": round(totals.cost_usd(m.spec), 6),
                    }
                    for m, model_stats, totals in results
                }
            ),
        }
    )


@dataclass
class _ModelRun:
    """One model's share of a chunk_embeddings step: what happened per recording and what the provider was asked
    for (also when it failed: that was paid for)."""

    model: Registered
    outcome: Outcome = field(default_factory=Outcome)  # filled as it goes: a fatal error keeps what was done
    totals: ProviderTotals = field(default_factory=ProviderTotals)


def _embed_model(
    context: dg.AssetExecutionContext,
    config: EmbedConfig,
    embedder: EmbedderResource,
    db: _Connection,
    run: _ModelRun,
    keys: Sequence[str],
) -> None:
    spec = run.model.spec
    # Failed by transcript_chunks in this run (recorded there): failed here by name, never planned.
    try:
        failed_upstream = passed_on(db.get(), context.run_id, spec.model_id, keys)
    except (psycopg.OperationalError, DatabaseUnavailableError) as e:  # as each recording would have met it
        error = f"{type(e).__name__}: {first_line(e)}"
        run.outcome.failed, run.outcome.transient = dict.fromkeys(keys, error), True
        return
    todo = [k for k in keys if k not in failed_upstream]
    # Built when a recording first needs the provider (a ConfigError then fails the step as fatal).
    client = LazyEmbedder(
        spec,
        lambda: embedder.build(
            batch_size=config.embed_batch_size,
            max_concurrency=config.max_concurrency,
            request_timeout_s=config.request_timeout_s,
            max_attempts=config.max_attempts,
            backoff_base_s=config.backoff_base_s,
            spec=spec,
        ),
    )
    # The provider gets the pending chunks of several recordings per batch: enough to fill every request in
    # flight (embed_batch_size x max_concurrency); each recording is still written in its own transaction.
    recordings = RecordingEmbedder(
        db.get,
        client,
        todo,
        window_inputs=config.embed_batch_size * config.max_concurrency,
        first_window_inputs=config.embed_batch_size,
        insert_batch_size=config.insert_batch_size,
        statement_timeout_ms=int(config.statement_timeout_s * 1000),
        adaptive_batches=config.adaptive_batches,
        prefetch=True,
        writers=config.write_concurrency,
        connect=db.connect,  # the writers' own connections
        log=context.log.info,
        run_id=context.run_id,
    )
    try:
        run.outcome.failed.update({k: f"chunking failed: {v}" for k, v in failed_upstream.items()})
        _run_each(
            context,
            todo,
            recordings,
            on_error=_recorder(context, db, [spec.model_id], "chunk_embeddings"),
            label=None if run.model.active else spec.model_id,
            into=run.outcome,
        )
    except (dg.Failure, dg.RetryRequested) as e:
        # What the provider answered was billed, whatever failed after it (lib/vector_cache.py keeps the vectors).
        run.totals = recordings.totals
        billed = _billed(run)
        if isinstance(e, dg.RetryRequested):
            context.log.warning(f"billed before the retry: {billed['tokens']} tokens (${billed['estimated_cost_usd']})")
            raise
        raise dg.Failure(e.description, {**e.metadata, **billed}, allow_retries=e.allow_retries) from None
    finally:
        recordings.close()
        client.close()
        run.totals = recordings.totals


def _billed(run: _ModelRun) -> dict[str, Any]:
    """A failed step's bill for one model: the tokens the provider answered and their estimated cost."""
    return {"tokens": run.totals.tokens, "estimated_cost_usd": round(run.totals.cost_usd(run.model.spec), 6)}


def _report_partial(context: dg.AssetExecutionContext, runs: Sequence[_ModelRun], *, retrying: bool) -> None:
    """Before the step fails: what the provider was asked for (an observation carrying the step's totals, so the
    usage of a failed step is counted, by `embed-assets embed` too), and, on its last attempt, a materialization
    of each recording whose vectors were written, with its own figures. Dagster then marks only the recordings
    the failure names FAILED (a partition is FAILED when its planned materialization has none after it and the
    run failed: dagster/_core/storage/partition_status_cache.py). One event per written recording, as the
    all-good path's MaterializeResult writes; no per-partition metadata API (it validates every key against the
    dynamic partitions, O(partitions): issue 17)."""
    provider = ProviderTotals()
    for r in runs:
        provider.merge(r.totals)
    if provider.requests:
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                description="provider usage of a step that failed or is retried (paid for all the same)",
                metadata={
                    "provider_requests": provider.requests,
                    "provider_retries": provider.retries,
                    "tokens": provider.tokens,
                    "embedded": provider.inputs,
                    "estimated_cost_usd": round(sum(r.totals.cost_usd(r.model.spec) for r in runs), 6),
                    "attempt": context.retry_number + 1,
                },
            )
        )
    active = runs[0] if runs else None
    if active is None:
        return
    failed = {k for r in runs for k in r.outcome.failed}
    if retrying:
        return  # the step is retried: the retry materializes them
    for key, stats in active.outcome.results.items():
        if key in failed:
            continue
        context.log_event(
            dg.AssetMaterialization(
                asset_key=context.asset_key,
                partition=key,
                description="written; other recordings of the run failed",
                metadata={
                    "recording": key,
                    "chunks": stats.chunks,
                    "embedded": stats.embedded,
                    "cache_hits": stats.cache_hits,
                    "tokens": stats.tokens,
                    "vectors_written": stats.vectors_written,
                    "vectors_deleted": stats.vectors_deleted,
                    "write_seconds": round(stats.write_seconds, 3),
                    "model": active.model.model_id,
                },
            )
        )


def _raise_failures(failures: list[tuple[str, dg.Failure | dg.RetryRequested]], registered: int) -> None:
    """One model's failure is the step's; with several models, the message names each model's."""
    if all(isinstance(e, dg.RetryRequested) for _, e in failures):
        raise failures[0][1]
    if registered == 1 and len(failures) == 1:
        raise failures[0][1]
    parts, metadata = [], {}
    for model_id, e in failures:
        what = e.description if isinstance(e, dg.Failure) else "failed transiently (the step is not retried now)"
        parts.append(f"model {model_id}: {what}")
        if isinstance(e, dg.Failure):
            metadata.update({f"{model_id}: {k}": v for k, v in e.metadata.items()})
    raise _fatal("; ".join(parts), **metadata)
