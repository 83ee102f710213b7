"""One recording through the pipeline: chunk it, then embed what changed. Dagster-free."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import psycopg

from embed_assets.lib.chunking import ChunkParams, chunk_segments
from embed_assets.lib.db.connection import Reconnecting
from embed_assets.lib.db.names import q
from embed_assets.lib.embedders.base import Embedder, EmbedResult, answered_before
from embed_assets.lib.errors import ConfigError, EmbedAssetsError, RecordingDeletedError
from embed_assets.lib.models import ModelSpec
from embed_assets.lib.sources.external import ExternalSource
from embed_assets.lib.sources.registry import (
    ORIGIN,
    clear_unreadable,
    origin_of,
    register,
    remove,
    set_segments_read,
)
from embed_assets.lib.sources.tables import read_recording
from embed_assets.lib.store import (
    BatchSizer,
    EmbeddingPlan,
    PendingChunk,
    VectorWrite,
    plan_embeddings,
    write_chunk_plan,
    write_vectors,
)
from embed_assets.lib.tokenizers import counter_name, token_counter
from embed_assets.lib.vector_cache import Billed, keep_bought


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
    model: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ChunkTarget:
    """A model to chunk for: its spec, and the tokenizer whose boundaries cut its chunks (lib/models/registry.py
    ``shared_tokenizer``: another model's, so both embed the same passages, where this model's limit allows)."""

    spec: ModelSpec
    tokenizer: str = ""

    @property
    def boundaries(self) -> str:
        return self.tokenizer or self.spec.tokenizer


def chunk_recording(
    conn: psycopg.Connection,
    recording_id: str,
    spec: ModelSpec,
    params: ChunkParams,
    source: ExternalSource | None = None,
    source_conn: Callable[[], psycopg.Connection] | None = None,
) -> ChunkStats:
    """Chunk one recording for one model, cut by its own tokenizer (chunk_models for several)."""
    return chunk_models(conn, recording_id, [ChunkTarget(spec)], params, source, source_conn)[0]


def chunk_models(
    conn: psycopg.Connection,
    recording_id: str,
    targets: Sequence[ChunkTarget],
    params: ChunkParams,
    source: ExternalSource | None = None,
    source_conn: Callable[[], psycopg.Connection] | None = None,
) -> list[ChunkStats]:
    """Chunk one recording from its current transcript for every model of ``targets``: the project's tables, or
    (with ``source``) the user's own tables read in place, whose registry row is brought up to date first. The
    transcript is read once for all models, and only when some model's chunks are not current."""
    started = time.perf_counter()
    fetched = None
    if source is not None and source_conn is not None and origin_of(conn, recording_id) == ORIGIN:
        fetched = source.fetch(source_conn(), recording_id)
        if fetched is None:
            # Gone from the source: forget it now (its chunks, vectors and errors go with its registry row, and the
            # tombstone tells the sensor to delete its partition), as the sensor's next pass would.
            remove(conn, [recording_id])
            raise RecordingDeletedError(
                f"recording {recording_id!r} is no longer in source {source.definition.name}: its chunks and "
                "vectors went with it; the sensor (or `embed-assets embed`) deletes its partition"
            )
        register(conn, [fetched.meta])  # the source may have changed since the sensor saw it
    out: list[ChunkStats] = []
    transcript: tuple[list, str] | None = None
    for target in targets:
        spec = target.spec
        shared = params.describe(counter_name(target.boundaries))
        own = params.describe(counter_name(spec.tokenizer))
        # Already chunked from this exact transcript by this exact chunker (the plan and its rows are written
        # in one transaction): nothing to do. Tokenizing is most of the cost of re-running a recording, and
        # loading the tokenizer most of the cost of a run where nothing changed.
        done = conn.execute(
            q(
                conn,
                """SELECT r.segment_count, p.chunk_count,
                      (SELECT coalesce(sum(token_count), 0) FROM {s}.chunks c WHERE c.recording_id = r.recording_id
                       AND c.model = p.model)
               FROM {s}.recordings r JOIN {s}.chunk_plans p ON p.recording_id = r.recording_id AND p.model = %s
               WHERE r.recording_id = %s AND p.source_hash = r.content_hash AND p.chunker = ANY(%s)""",
            ),
            (spec.model_id, recording_id, [shared, own]),
        ).fetchone()
        if done is not None:
            segments, n_chunks, tokens = done
            out.append(ChunkStats(recording_id, segments, n_chunks, tokens, 0, 0, n_chunks, 0.0, spec.model_id))
            continue
        if transcript is None:
            transcript = _transcript(conn, recording_id, fetched, source, [t.spec.model_id for t in targets])
        segments, content_hash = transcript
        began = time.perf_counter()
        chunks, chunker = _chunks(segments, params, target, shared, own)
        written = write_chunk_plan(conn, recording_id, spec.model_id, content_hash, chunker, chunks)
        out.append(
            ChunkStats(
                recording_id,
                len(segments),
                len(chunks),
                sum(c.token_count for c in chunks),
                written.inserted,
                written.deleted,
                written.unchanged,
                time.perf_counter() - began,
                spec.model_id,
            )
        )
    if out:
        out[0].seconds += time.perf_counter() - started - sum(s.seconds for s in out)
    return out


def passed_on(conn: psycopg.Connection, run_id: str, model_id: str, keys: Sequence[str]) -> dict[str, str]:
    """Recordings of ``keys`` that transcript_chunks failed in run ``run_id`` (it records the error and lets the
    run go on, so one bad recording never holds back the others): recording -> its error. chunk_embeddings
    fails these by name without planning them (their chunks, if any, are not of the current transcript)."""
    return dict(
        conn.execute(
            q(
                conn,
                """SELECT recording_id, error FROM {s}.recording_errors
                   WHERE run_id = %s AND model = %s AND asset = 'transcript_chunks' AND recording_id = ANY(%s)""",
            ),
            (run_id, model_id, list(keys)),
        ).fetchall()
    )


def _transcript(
    conn: psycopg.Connection,
    recording_id: str,
    fetched: Any,
    source: ExternalSource | None,
    model_ids: list[str],
) -> tuple[list, str]:
    """The recording's segments and content hash: from the fetched source row, or the project's tables."""
    if fetched is not None and source is not None:
        segments = source.segments(fetched)  # UnreadableSourceRow: this recording fails alone
        content_hash = fetched.meta.content_hash
        set_segments_read(conn, recording_id, content_hash, [s.seq for s in segments])
        for model_id in model_ids:
            clear_unreadable(conn, recording_id, model_id)  # read now (a parser fix, say): not unreadable
        return segments, content_hash
    own = read_recording(conn, recording_id)
    if own is None:
        raise RecordingDeletedError(
            f"recording {recording_id!r} is not in the source tables (deleted?); the sensor removes its "
            "partition, or load it again with `embed-assets load`"
        )
    if not own.segments and origin_of(conn, recording_id) == ORIGIN:  # never chunk it as empty
        raise ConfigError(
            f"recording {recording_id!r} comes from a source file (EMBED_SOURCE), which is not set where this "
            "run executes; set EMBED_SOURCE (and its database_url variable) there, as for the sensor"
        )
    return own.segments, own.content_hash


def _chunks(segments: list, params: ChunkParams, target: ChunkTarget, shared: str, own: str) -> tuple[list, str]:
    """Chunks cut at ``target``'s boundaries, with token counts by the model's own tokenizer (what it is billed
    and limited by). Where a shared boundary leaves a chunk over the model's own limit, the recording is cut again
    with the model's own tokenizer: no input is ever truncated by the model."""
    spec = target.spec
    chunks = chunk_segments(segments, params, token_counter(target.boundaries))
    if target.boundaries == spec.tokenizer:
        return chunks, own
    counts = token_counter(spec.tokenizer).count_many([c.content for c in chunks])
    if max(counts, default=0) > spec.max_input_tokens - 2:
        return chunk_segments(segments, params, token_counter(spec.tokenizer)), own
    return [replace(c, token_count=n) for c, n in zip(chunks, counts, strict=True)], shared


@dataclass
class EmbedStats:
    """One recording's share. Provider requests, retries and time are per batch and shared by the recordings
    of the batch, so they are counted once, in RecordingEmbedder.totals, not here."""

    recording_id: str
    chunks: int = 0
    embedded: int = 0  # chunks whose text was sent to the provider for this recording
    cache_hits: int = 0  # vectors reused: already in place, same text and model elsewhere, or in this batch
    tokens: int = 0  # tokens of the chunks sent for this recording (exact count by the model's tokenizer)
    vectors_written: int = 0
    vectors_deleted: int = 0
    insert_statements: int = 0
    write_seconds: float = 0.0
    adapted: str = ""  # why this recording was written in smaller insert batches than configured

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ProviderTotals:
    """What the provider was asked for over a step, as it reported it (usage tokens when it sends them)."""

    inputs: int = 0
    tokens: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    seconds: float = 0.0

    def cost_usd(self, spec: ModelSpec) -> float:
        return self.tokens * spec.usd_per_million_tokens / 1_000_000

    def merge(self, other: ProviderTotals) -> None:
        for name in ("inputs", "tokens", "requests", "retries", "rate_limited", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def add(self, inputs: int, result: EmbedResult) -> None:
        self.inputs += inputs
        self.tokens += result.tokens
        self.requests += result.requests
        self.retries += result.retries
        self.rate_limited += result.rate_limited
        self.seconds += result.seconds


@dataclass
class _Planned:
    plan: EmbeddingPlan
    stats: EmbedStats
    vectors: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)


class RecordingEmbedder:
    """Embeds recordings in order, one call per recording, each written in its own transaction; but the
    provider is asked for the pending chunks of several recordings at once. Called for a recording that is
    not planned yet, it plans it and the recordings after it (diff queries only, no writes) until
    ``window_inputs`` chunks are pending, embeds their distinct texts in packed requests, and keeps the
    vectors until each recording's turn. A short call of a few chunks then costs a share of a request, not
    a round trip of its own (`make bench`, e2e).

    Failures stay per recording: a recording that cannot be planned ends the window before it and fails on
    its own turn; a provider failure fails the recording whose call embedded the window, and the next
    recording starts a new window (nothing was paid for a failed request); a write failure loses only that
    recording, the others of the window are still written with the vectors already paid for. The write
    re-checks each plan under the recording's lock (write_vectors), so planning ahead cannot write stale
    vectors. The same text twice in a window is sent once.

    Paid once: whatever the provider answers (a whole window, or the requests answered before one of them
    failed) is counted in ``totals`` and kept in the vector cache with its bill, committed before any indexed
    write (lib/vector_cache.py), on a connection of its own (``connect``) as soon as it arrives. A write that
    times out or is killed, or a window that fails halfway, then costs no second purchase: the next plan (this
    run's, the small-batch retry's) finds the vectors there. Without ``connect``, a prefetched window's vectors
    are kept by the calling thread when its turn comes (the step's connection may be mid-write meanwhile).

    With ``prefetch``, the next window is planned as soon as one is embedded and sent to the provider on a
    thread of its own while this one's recordings are written, so the provider waits for no write and no
    write for the provider (the seed bench's provider budget is then used without gaps). Its texts already
    embedded in the window before it are taken from there, not sent again (those vectors are not in the
    table yet when it is planned)."""

    def __init__(
        self,
        conn: Callable[[], psycopg.Connection],
        embedder: Embedder,
        keys: Sequence[str],
        *,
        window_inputs: int,
        first_window_inputs: int | None = None,
        insert_batch_size: int,
        statement_timeout_ms: int,
        adaptive_batches: bool = False,
        prefetch: bool = False,
        writers: int = 1,
        connect: Callable[[], psycopg.Connection] | None = None,
        log: Callable[[str], None] = lambda _: None,
        run_id: str | None = None,
    ) -> None:
        self._conn, self._embedder, self._keys = conn, embedder, list(keys)
        self._run_id = run_id  # provider_usage.run_id of what this step buys
        self._keeper = Reconnecting(connect) if connect is not None else None  # keeps bought vectors (any thread)
        self._keep_lock, self._pruned = threading.Lock(), False
        self._sizer = BatchSizer(floor=min(5, insert_batch_size)) if adaptive_batches else None
        self._position = {k: i for i, k in enumerate(self._keys)}
        self._window_inputs = max(1, window_inputs)
        # A window embedded while nothing else is (the step's first, with prefetch) holds back the first write: it
        # can be smaller (one request's worth), the windows after it are embedded while the writers work.
        self._first_inputs = max(1, first_window_inputs or window_inputs)
        self._insert_batch_size, self._statement_timeout_ms = insert_batch_size, statement_timeout_ms
        self._log = log
        self._ready: dict[str, _Planned] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch else None
        # head key, window, its embedding, and what it bought to keep on this thread (without ``connect``)
        self._next: tuple[str, list[_Planned], Future[None], list[Callable[[], None]]] | None = None
        # writers > 1: recordings are written on that many threads, each on a connection of its own (``connect``),
        # in order of the keys; this thread plans and embeds, and returns each recording's result in turn.
        self._writers = _Writers(max(1, writers), connect) if writers > 1 and connect is not None else None
        self._writing: dict[str, Future[tuple[_Planned, VectorWrite]]] = {}
        self.totals = ProviderTotals()

    def close(self) -> None:
        """Stop prefetching: a window not started is cancelled, one in flight is waited for; writes not started
        are cancelled, those in flight finish (each is a transaction of its own) and their connections close."""
        ahead, self._next = self._next, None
        if self._pool is not None:
            if ahead is not None:
                ahead[2].cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._writers is not None:
            self._writing.clear()
            self._writers.close()
        try:
            if ahead is not None:
                _run_all(ahead[3])  # a window embedded in flight was paid for: keep it
        finally:
            if self._keeper is not None:
                self._keeper.close()

    def __call__(self, recording_id: str) -> EmbedStats:
        if self._writers is None:
            if recording_id not in self._ready:
                self._fill(recording_id)
            planned = self._ready.pop(recording_id)
            w = self._write(self._conn(), planned)
        else:
            if recording_id not in self._writing:
                if recording_id not in self._ready:
                    self._fill(recording_id)
                self._submit(recording_id)
            self._submit_ready()  # the window's next recordings, so every writer stays busy
            planned, w = self._writing.pop(recording_id).result()  # its error is this recording's
        stats = planned.stats
        stats.vectors_written, stats.vectors_deleted = w.written, w.deleted
        stats.insert_statements, stats.write_seconds, stats.adapted = w.statements, w.seconds, w.adapted
        if w.adapted:
            self._log(f"{recording_id}: smaller insert batches to stay under the statement timeout: {w.adapted}")
        return stats

    def _write(self, conn: psycopg.Connection, planned: _Planned) -> VectorWrite:
        return write_vectors(
            conn,
            planned.plan,
            planned.vectors,
            insert_batch_size=self._insert_batch_size,
            statement_timeout_ms=self._statement_timeout_ms,
            sizer=self._sizer,
        )

    def _submit(self, recording_id: str) -> None:
        assert self._writers is not None
        planned = self._ready.pop(recording_id)
        self._writing[recording_id] = self._writers.submit(lambda conn: (planned, self._write(conn, planned)))

    def _submit_ready(self) -> None:
        """Queue the planned recordings, in key order (the writers take them first come, first served)."""
        for key in sorted(self._ready, key=lambda k: self._position.get(k, len(self._keys))):
            self._submit(key)

    def _plan(self, recording_id: str) -> _Planned:
        plan = plan_embeddings(self._conn(), recording_id, self._embedder.spec.model_id)
        return _Planned(
            plan, EmbedStats(recording_id, chunks=plan.chunk_count, cache_hits=plan.in_place + len(plan.cached))
        )

    def _fill(self, recording_id: str) -> None:
        self._ready.clear()  # a window serves the calls that follow it in order; a skipped one is planned again
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == recording_id:
            window = ahead[1]
            try:
                ahead[2].result()  # its provider error is this recording's, as if embedded on its own call
            finally:
                _run_all(ahead[3])
        else:
            if ahead is not None:
                ahead[2].cancel()
                wait([ahead[2]])
                _run_all(ahead[3])
            window = self._window(recording_id, self._first_inputs if self._pool is not None else None)
            self._embed(window)
        self._ready = {p.plan.recording_id: p for p in window}
        if self._pool is not None:
            self._prefetch_after(window)

    def _prefetch_after(self, window: list[_Planned]) -> None:
        position = self._position.get(window[-1].plan.recording_id)
        if position is None or position + 1 >= len(self._keys):
            return
        head = self._keys[position + 1]
        try:
            ahead = self._window(head)
        except (EmbedAssetsError, psycopg.Error):
            return  # the head fails (or succeeds) on its own turn, planned again then
        known = {h: v for p in window for h, v in p.vectors.values()}
        for p in ahead:
            keep = []
            for c in p.plan.to_embed:
                if c.content_hash in known:
                    p.vectors[c.chunk_index] = (c.content_hash, known[c.content_hash])
                    p.stats.cache_hits += 1
                else:
                    keep.append(c)
            p.plan.to_embed = keep
        assert self._pool is not None
        deferred: list[Callable[[], None]] = []
        self._next = (head, ahead, self._pool.submit(self._embed, ahead, deferred), deferred)

    def _window(self, recording_id: str, inputs: int | None = None) -> list[_Planned]:
        window = [self._plan(recording_id)]  # the caller's own recording: its errors are its own
        pending, limit = len(window[0].plan.to_embed), inputs or self._window_inputs
        for key in self._keys[self._position.get(recording_id, len(self._keys)) + 1 :]:
            if pending >= limit:
                break
            try:
                window.append(self._plan(key))
            except (EmbedAssetsError, psycopg.Error):
                break  # this recording fails (or succeeds) on its own turn
            pending += len(window[-1].plan.to_embed)
        return window

    def _embed(self, window: list[_Planned], deferred: list[Callable[[], None]] | None = None) -> None:
        first: dict[str, PendingChunk] = {}  # content hash -> the chunk that carries it to the provider
        for p in window:
            for c in p.plan.to_embed:
                if c.content_hash in first:
                    p.stats.cache_hits += 1
                else:
                    first[c.content_hash] = c
                    p.stats.embedded += 1
                    p.stats.tokens += c.token_count
        if not first:
            return
        chunks = list(first.values())
        total, done, next_report = len(chunks), 0, 0.25
        label = window[0].plan.recording_id + (f" .. {window[-1].plan.recording_id}" if len(window) > 1 else "")

        def progress(n: int) -> None:
            nonlocal done, next_report
            done += n
            if total >= 200 and done / total >= next_report and done < total:
                self._log(f"{label}: embedded {done}/{total} chunks")
                next_report += 0.25

        try:
            result = self._embedder.embed([c.content for c in chunks], [c.token_count for c in chunks], progress)
        except Exception as e:
            answered = answered_before(e)  # requests of this window answered before one failed: paid for
            if answered is not None:
                self._keep(chunks, answered.indexes, answered.result, deferred)
            raise
        self._keep(chunks, range(total), result, deferred)
        by_hash = {c.content_hash: result.vectors[i] for i, c in enumerate(chunks)}
        for p in window:
            p.vectors.update({c.chunk_index: (c.content_hash, by_hash[c.content_hash]) for c in p.plan.to_embed})

    def _keep(
        self,
        chunks: list[PendingChunk],
        indexes: Sequence[int],
        result: EmbedResult,
        deferred: list[Callable[[], None]] | None,
    ) -> None:
        """Count what the provider billed, and keep what it answered (committed before any indexed write)."""
        self.totals.add(len(indexes), result)
        if not len(indexes) and not result.tokens:
            return  # nothing answered, nothing billed (a failed request)
        hashes = [chunks[i].content_hash for i in indexes]
        vectors = result.vectors if len(indexes) == len(chunks) else result.vectors[list(indexes)]
        billed = Billed(result.requests, len(indexes), result.tokens)

        def keep(conn: Callable[[], psycopg.Connection]) -> None:
            with self._keep_lock:
                keep_bought(
                    conn(), self._embedder.spec.model_id, hashes, vectors, billed, run_id=self._run_id,
                    prune=not self._pruned,
                )  # fmt: skip
                self._pruned = True

        if self._keeper is not None:
            keep(self._keeper.get)
        elif deferred is not None:  # a prefetch thread without a connection of its own: the caller's turn keeps it
            deferred.append(lambda: keep(self._conn))
        else:
            keep(self._conn)


def _run_all(jobs: list[Callable[[], None]]) -> None:
    while jobs:
        jobs.pop(0)()


class _Writers:
    """Threads that each write on a connection of their own (opened on first use, replaced when the server drops
    it, closed with the pool)."""

    def __init__(self, n: int, connect: Callable[[], psycopg.Connection]) -> None:
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="write")
        self._connect, self._local, self._lock = connect, threading.local(), threading.Lock()
        self._opened: list[Reconnecting] = []

    def _conn(self) -> psycopg.Connection:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = Reconnecting(self._connect)
            with self._lock:
                self._opened.append(held)
        return held.get()

    def submit(self, work: Callable[[psycopg.Connection], Any]) -> Future[Any]:
        return self._pool.submit(lambda: work(self._conn()))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for held in self._opened:
                held.close()
            self._opened.clear()


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
    return RecordingEmbedder(
        lambda: conn,
        embedder,
        [recording_id],
        window_inputs=1,
        insert_batch_size=insert_batch_size,
        statement_timeout_ms=statement_timeout_ms,
        log=log,
    )(recording_id)
