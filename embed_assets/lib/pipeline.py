"""One recording through the pipeline: chunk it, then embed what changed. Dagster-free."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg

from embed_assets.lib.chunking import ChunkParams, chunk_segments
from embed_assets.lib.embedders.base import Embedder
from embed_assets.lib.errors import RecordingDeletedError
from embed_assets.lib.models import ModelSpec
from embed_assets.lib.sources import read_recording
from embed_assets.lib.store import plan_embeddings, write_chunk_plan, write_vectors
from embed_assets.lib.tokenizers import token_counter


@dataclass
class ChunkStats:
    recording_id: str
    segments: int
    chunks: int
    tokens: int
    inserted: int
    deleted: int
    unchanged: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def chunk_recording(conn: psycopg.Connection, recording_id: str, spec: ModelSpec, params: ChunkParams) -> ChunkStats:
    started = time.perf_counter()
    counter = token_counter(spec.tokenizer)
    chunker = params.describe(counter.name)
    # Already chunked from this exact transcript by this exact chunker (the plan and its rows are written
    # in one transaction): nothing to do. Tokenizing is most of the cost of re-running a recording.
    done = conn.execute(
        """SELECT r.segment_count, p.chunk_count,
                  (SELECT coalesce(sum(token_count), 0) FROM chunks c WHERE c.recording_id = r.recording_id
                   AND c.model = p.model)
           FROM recordings r JOIN chunk_plans p ON p.recording_id = r.recording_id AND p.model = %s
           WHERE r.recording_id = %s AND p.source_hash = r.content_hash AND p.chunker = %s""",
        (spec.model_id, recording_id, chunker),
    ).fetchone()
    if done is not None:
        segments, n_chunks, tokens = done
        return ChunkStats(recording_id, segments, n_chunks, tokens, 0, 0, n_chunks, time.perf_counter() - started)
    source = read_recording(conn, recording_id)
    if source is None:
        raise RecordingDeletedError(
            f"recording {recording_id!r} is not in the source tables (deleted?); the sensor removes its "
            "partition, or load it again with `embed-assets load`"
        )
    chunks = chunk_segments(source.segments, params, counter)
    written = write_chunk_plan(conn, recording_id, spec.model_id, source.content_hash, chunker, chunks)
    return ChunkStats(
        recording_id,
        len(source.segments),
        len(chunks),
        sum(c.token_count for c in chunks),
        written.inserted,
        written.deleted,
        written.unchanged,
        time.perf_counter() - started,
    )


@dataclass
class EmbedStats:
    recording_id: str
    chunks: int = 0
    embedded: int = 0  # sent to the provider
    cache_hits: int = 0  # vectors reused: already in place, or same text and model elsewhere
    tokens: int = 0  # tokens sent to the provider
    requests: int = 0
    retries: int = 0
    vectors_written: int = 0
    vectors_deleted: int = 0
    insert_statements: int = 0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0

    def cost_usd(self, spec: ModelSpec) -> float:
        return self.tokens * spec.usd_per_million_tokens / 1_000_000

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def embed_recording(
    conn: psycopg.Connection,
    recording_id: str,
    embedder: Embedder,
    *,
    insert_batch_size: int,
    statement_timeout_ms: int,
    log: Callable[[str], None] = lambda _: None,
) -> EmbedStats:
    """Embed the chunks of one recording whose vectors are missing or stale, and write them atomically."""
    spec = embedder.spec
    plan = plan_embeddings(conn, recording_id, spec.model_id)
    stats = EmbedStats(recording_id, chunks=plan.chunk_count, cache_hits=plan.in_place + len(plan.cached))
    vectors = {}
    if plan.to_embed:
        total, done, next_report = len(plan.to_embed), 0, 0.25

        def progress(n: int) -> None:
            nonlocal done, next_report
            done += n
            if total >= 200 and done / total >= next_report and done < total:
                log(f"{recording_id}: embedded {done}/{total} chunks")
                next_report += 0.25

        result = embedder.embed([c.content for c in plan.to_embed], [c.token_count for c in plan.to_embed], progress)
        stats.embedded, stats.tokens = len(plan.to_embed), result.tokens
        stats.requests, stats.retries, stats.embed_seconds = result.requests, result.retries, result.seconds
        vectors = {c.chunk_index: (c.content_hash, result.vectors[i]) for i, c in enumerate(plan.to_embed)}
    # Always write (even with nothing new): stale vectors go, and embedded_recordings records that this
    # source version is embedded. An unchanged recording costs one small transaction and no vector writes.
    w = write_vectors(
        conn, plan, vectors, insert_batch_size=insert_batch_size, statement_timeout_ms=statement_timeout_ms
    )
    stats.vectors_written, stats.vectors_deleted = w.written, w.deleted
    stats.insert_statements, stats.write_seconds = w.statements, w.seconds
    return stats
