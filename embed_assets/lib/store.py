"""Chunk plans and vectors in Postgres: diff by content hash, binary COPY, one transaction per recording.

Why a diff and not delete-all + insert: HNSW maintenance dominates vector writes, and deleting rows churns
the index as much as inserting them (DESIGN.md principle 4). So a re-materialization deletes and writes
only the rows whose content hash changed; an unchanged recording costs no vector writes at all.
Every writer takes the recording's advisory lock and re-reads under it, so retries, two concurrent runs
of one partition and a kill -9 mid-write all end with exactly one consistent copy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import psycopg

from embed_assets.lib.chunking import Chunk
from embed_assets.lib.db.connection import register_vector_types
from embed_assets.lib.db.names import q
from embed_assets.lib.db.rows import write_rows
from embed_assets.lib.errors import ConfigError, EmbedAssetsError, RecordingDeletedError
from embed_assets.lib.sources.formats import UnreadableSourceRow
from embed_assets.lib.sources.tables import LOCK_RECORDING, lock_recording
from embed_assets.lib.vector_cache import consume, keep_replaced


class SourceChangedError(EmbedAssetsError):
    """The recording changed or vanished while we worked on it; the next run picks up the new version."""


CHUNK_COLUMNS = (
    "recording_id",
    "model",
    "chunk_index",
    "content",
    "first_seq",
    "last_seq",
    "start_s",
    "end_s",
    "speakers",
    "token_count",
    "content_hash",
)


def chunk_row(recording_id: str, model_id: str, c: Chunk) -> tuple:
    """A chunk as a row of ``CHUNK_COLUMNS``."""
    return (
        recording_id,
        model_id,
        c.chunk_index,
        c.content,
        c.first_seq,
        c.last_seq,
        c.start_s,
        c.end_s,
        list(c.speakers),
        c.token_count,
        c.content_hash,
    )


@dataclass(frozen=True)
class PlanWrite:
    chunks: int
    inserted: int
    deleted: int
    unchanged: int


def write_chunk_plan(
    conn: psycopg.Connection,
    recording_id: str,
    model_id: str,
    source_hash: str,
    chunker: str,
    chunks: Sequence[Chunk],
) -> PlanWrite:
    """Replace the recording's chunk rows for ``model_id`` with ``chunks``, touching only changed rows."""
    with conn.transaction():
        lock_recording(conn, recording_id)
        row = conn.execute(  # the source's hash and the chunks in place, in one round trip
            q(
                conn,
                """SELECT r.content_hash, coalesce(c.indexes, '{{}}'), coalesce(c.hashes, '{{}}')
               FROM {s}.recordings r
               CROSS JOIN LATERAL (SELECT array_agg(chunk_index ORDER BY chunk_index) AS indexes,
                                          array_agg(content_hash ORDER BY chunk_index) AS hashes
                                   FROM {s}.chunks WHERE recording_id = r.recording_id AND model = %(m)s) c
               WHERE r.recording_id = %(r)s""",
            ),
            {"r": recording_id, "m": model_id},
        ).fetchone()
        if row is None:
            raise RecordingDeletedError(f"recording {recording_id!r} was deleted from the source while chunking")
        if row[0] != source_hash:
            raise SourceChangedError(
                f"recording {recording_id!r} changed in the source while chunking; re-run its partition"
            )
        existing = dict(zip(row[1], row[2], strict=True))
        wanted = {c.chunk_index: c for c in chunks}
        stale = [i for i, h in existing.items() if i not in wanted or wanted[i].content_hash != h]
        new = [c for c in chunks if existing.get(c.chunk_index) != c.content_hash]
        if stale:
            conn.execute(
                q(conn, "DELETE FROM {s}.chunks WHERE recording_id = %s AND model = %s AND chunk_index = ANY(%s)"),
                (recording_id, model_id, stale),
            )
        if new:
            write_rows(
                conn,
                "chunks",
                CHUNK_COLUMNS,
                [chunk_row(recording_id, model_id, c) for c in new],
            )
        conn.execute(
            q(
                conn,
                """INSERT INTO {s}.chunk_plans (recording_id, model, source_hash, chunk_count, chunker)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (recording_id, model) DO UPDATE
               SET source_hash = EXCLUDED.source_hash, chunk_count = EXCLUDED.chunk_count,
                   chunker = EXCLUDED.chunker, chunked_at = now()
               WHERE (chunk_plans.source_hash, chunk_plans.chunk_count, chunk_plans.chunker)
                     IS DISTINCT FROM (EXCLUDED.source_hash, EXCLUDED.chunk_count, EXCLUDED.chunker)""",
            ),
            (recording_id, model_id, source_hash, len(chunks), chunker),
        )
    return PlanWrite(len(chunks), len(new), len(stale), len(chunks) - len(new))


@dataclass(frozen=True)
class PendingChunk:
    chunk_index: int
    content: str
    content_hash: str
    token_count: int


@dataclass
class EmbeddingPlan:
    """What one recording needs: chunks already embedded in place, chunks whose vector exists elsewhere
    (same model and text: a cache hit, no provider call) and chunks to send to the provider."""

    recording_id: str
    model_id: str
    source_hash: str
    chunked_at: object  # chunk_plans.chunked_at: the plan version the diff was made against
    chunk_count: int
    in_place: int
    vector_count: int = -1  # vectors stored for the recording and model (-1: not counted)
    cached: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)
    to_embed: list[PendingChunk] = field(default_factory=list)


def plan_embeddings(conn: psycopg.Connection, recording_id: str, model_id: str) -> EmbeddingPlan:
    """Diff the recording's chunk plan against its stored vectors. Raises if it was never chunked."""
    register_vector_types(conn)
    plan = conn.execute(
        q(
            conn,
            """SELECT p.source_hash, p.chunked_at,
                  (SELECT count(*) FROM {s}.chunk_vectors v
                   WHERE v.recording_id = p.recording_id AND v.model = p.model),
                  x.error
               FROM {s}.recordings r
               LEFT JOIN {s}.chunk_plans p ON p.recording_id = r.recording_id AND p.model = %(m)s
               LEFT JOIN {s}.recording_errors x ON x.recording_id = r.recording_id AND x.model = %(m)s
                    AND x.unreadable AND x.source_hash = r.content_hash
               WHERE r.recording_id = %(r)s""",
        ),
        {"r": recording_id, "m": model_id},
    ).fetchone()
    if plan is not None and plan[3] is not None:  # its current source row could not be read when chunking
        raise UnreadableSourceRow(plan[3])
    if plan is None or plan[0] is None:
        _raise_if_deleted(conn, recording_id)
        raise SourceChangedError(
            f"recording {recording_id!r} has no chunks for model {model_id!r}; "
            "materialize transcript_chunks for this partition first"
        )
    rows = conn.execute(
        q(
            conn,
            """SELECT c.chunk_index, c.content, c.content_hash, c.token_count, v.content_hash
           FROM {s}.chunks c
           LEFT JOIN {s}.chunk_vectors v ON v.recording_id = c.recording_id AND v.model = c.model
                                     AND v.chunk_index = c.chunk_index
           WHERE c.recording_id = %s AND c.model = %s ORDER BY c.chunk_index""",
        ),
        (recording_id, model_id),
    ).fetchall()
    missing = [PendingChunk(r[0], r[1], r[2], r[3]) for r in rows if r[4] != r[2]]
    result = EmbeddingPlan(recording_id, model_id, plan[0], plan[1], len(rows), len(rows) - len(missing), plan[2])
    if missing:
        # Same model and text elsewhere in the table, or adopted (`embed-assets adopt`): never paid twice.
        found = dict(
            conn.execute(
                q(
                    conn,
                    """SELECT DISTINCT ON (content_hash) content_hash, embedding FROM (
                           SELECT content_hash, embedding, 0 AS pref FROM {s}.chunk_vectors
                           WHERE model = %(m)s AND content_hash = ANY(%(h)s)
                           UNION ALL
                           SELECT content_hash, embedding, 1 FROM {s}.vector_cache
                           WHERE model = %(m)s AND content_hash = ANY(%(h)s)) found
                       ORDER BY content_hash, pref""",
                ),
                {"m": model_id, "h": list({m.content_hash for m in missing})},
            ).fetchall()
        )
        for m in missing:
            if m.content_hash in found:
                result.cached[m.chunk_index] = (m.content_hash, as_array(found[m.content_hash]))
            else:
                result.to_embed.append(m)
    return result


def _raise_if_deleted(conn: psycopg.Connection, recording_id: str) -> None:
    if (
        conn.execute(q(conn, "SELECT 1 FROM {s}.recordings WHERE recording_id = %s"), (recording_id,)).fetchone()
        is None
    ):
        raise RecordingDeletedError(
            f"recording {recording_id!r} was deleted from the source; its chunks and vectors went with it "
            "and nothing was written (the sensor removes its partition)"
        )


def as_array(value: object) -> np.ndarray:
    to_numpy = getattr(value, "to_numpy", None)  # pgvector >= 0.4 loads `vector` as a Vector object
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


@dataclass(frozen=True)
class VectorWrite:
    written: int
    deleted: int
    statements: int
    seconds: float
    adapted: str = ""  # why smaller insert batches than configured were used, if they were


class BatchSizer:
    """Insert batches sized so each COPY statement is predicted to take at most ``share`` of the statement
    timeout, from the write latency per row measured on this step's statements so far (the first statement
    of a step, with nothing measured yet, is a probe of ``floor`` rows). A long recording into a slow index
    is then written in small batches from its first attempt instead of timing out and waiting for the retry
    schedule (which stays the safety net). Never below ``floor`` rows (the small-batch preset's size): when
    even that is predicted too slow, nothing can help and the statement timeout fails the recording."""

    def __init__(self, floor: int = 5, share: float = 0.25) -> None:
        self.floor, self.share = floor, share
        self.per_row_s: float | None = None  # rises at once with a slower statement, decays halfway per statement

    def size(self, configured: int, timeout_s: float) -> int:
        if configured <= self.floor:
            return configured
        if self.per_row_s is None:
            return self.floor
        fits = int(timeout_s * self.share / self.per_row_s) if self.per_row_s > 0 else configured
        return max(self.floor, min(configured, fits))

    def observe(self, rows: int, seconds: float) -> None:
        per_row = seconds / max(rows, 1)
        self.per_row_s = per_row if self.per_row_s is None else max(per_row, (self.per_row_s + per_row) / 2)


def write_vectors(
    conn: psycopg.Connection,
    plan: EmbeddingPlan,
    vectors: dict[int, tuple[str, np.ndarray]],
    *,
    insert_batch_size: int,
    statement_timeout_ms: int,
    sizer: BatchSizer | None = None,
) -> VectorWrite:
    """Write the recording's new vectors in one transaction: delete rows whose chunk changed, then binary
    COPY the new ones in statements of ``insert_batch_size`` rows (fewer when ``sizer`` predicts a statement
    timeout), each under ``statement_timeout_ms``."""
    started = time.perf_counter()
    rows = {**plan.cached, **vectors}
    # A recording whose every vector is in place, and no other: the marker alone, one statement instead of the
    # write transaction (the unchanged re-run was ~3 ms per recording of queries, `make bench`). No lock needed:
    # nothing is written but the marker, and a re-chunk that commits first makes its plan check fail, which sends
    # the recording down the full path (which reports what changed).
    if not rows and plan.vector_count == plan.in_place == plan.chunk_count and _mark_embedded(conn, plan):
        return VectorWrite(0, 0, 0, time.perf_counter() - started)
    register_vector_types(conn)
    with conn.transaction():
        conn.execute(  # the session's timeout for this transaction, then the recording's lock (one round trip)
            f"SELECT set_config('statement_timeout', %s, true), {LOCK_RECORDING}",
            (str(statement_timeout_ms), plan.recording_id),
        )
        current = conn.execute(  # read under the lock: the plan in force and the model's dimension
            q(
                conn,
                """SELECT (SELECT chunked_at FROM {s}.chunk_plans WHERE recording_id = %(r)s AND model = %(m)s),
                      (SELECT dimension FROM {s}.models WHERE model = %(m)s)""",
            ),
            {"r": plan.recording_id, "m": plan.model_id},
        ).fetchone()
        if current[0] is None:
            _raise_if_deleted(conn, plan.recording_id)
        if current[0] is None or current[0] != plan.chunked_at:
            raise SourceChangedError(
                f"recording {plan.recording_id!r} was re-chunked or deleted during embedding; "
                "nothing was written, re-run its partition"
            )
        if current[1] is None:
            raise ConfigError(
                f"model {plan.model_id!r} is not registered in this database, so it has no table of vectors; "
                f"nothing was written. Register it with `embed-assets model shadow {plan.model_id.split('@')[0]}`"
            )
        dim = current[1]
        for idx, (_, vec) in rows.items():
            if vec.shape != (dim,):
                raise ConfigError(
                    f"chunk {idx} of {plan.recording_id!r} has a {vec.shape[0]}-dim vector but model "
                    f"{plan.model_id} is registered with {dim} dimensions; nothing was written. Check the "
                    "provider's model (OPENAI_BASE_URL) and EMBED_DIMENSIONS"
                )
        # Delete vectors of chunks that changed or no longer exist (only those: deletes churn the index), and read
        # what stays: a concurrent run of the same partition may have written some of these rows already (skipped).
        # The SELECT sees the rows as they were before the DELETE of the same statement, less those it deletes.
        kept = conn.execute(
            q(
                conn,
                """WITH gone AS (
                   DELETE FROM {s}.chunk_vectors v
                   WHERE v.recording_id = %(r)s AND v.model = %(m)s
                     AND NOT EXISTS (SELECT 1 FROM {s}.chunks c
                                     WHERE c.recording_id = v.recording_id AND c.model = v.model
                                       AND c.chunk_index = v.chunk_index AND c.content_hash = v.content_hash)
                   RETURNING v.chunk_index)
               SELECT v.chunk_index, v.content_hash, g.chunk_index IS NULL,
                      CASE WHEN g.chunk_index IS NOT NULL THEN v.embedding END
               FROM {s}.chunk_vectors v LEFT JOIN gone g ON g.chunk_index = v.chunk_index
               WHERE v.recording_id = %(r)s AND v.model = %(m)s""",
            ),
            {"r": plan.recording_id, "m": plan.model_id},
        ).fetchall()
        have = {i: h for i, h, stays, _ in kept if stays}
        # The vectors of chunks edited away were paid for: kept (after the commit) so a revert costs nothing.
        replaced = {h: as_array(e) for _, h, stays, e in kept if not stays}
        deleted = len(kept) - len(have)
        items = sorted((i, r) for i, r in rows.items() if have.get(i) != r[0])
        statements, start, smallest = 0, 0, max(1, insert_batch_size)
        timeout_s = statement_timeout_ms / 1000
        while start < len(items):
            probe = sizer is not None and sizer.per_row_s is None
            n = sizer.size(max(1, insert_batch_size), timeout_s) if sizer else max(1, insert_batch_size)
            batch = items[start : start + n]
            began = time.perf_counter()
            write_rows(
                conn,
                "chunk_vectors",
                ("recording_id", "model", "chunk_index", "content_hash", "embedding"),
                [(plan.recording_id, plan.model_id, idx, h, vec) for idx, (h, vec) in batch],
                binary_types=("text", "text", "int4", "text", "vector"),
            )
            if sizer:
                sizer.observe(len(batch), time.perf_counter() - began)
            if not probe and len(batch) == n:  # not the step's probe, nor a last, short remainder
                smallest = min(smallest, n)
            statements += 1
            start += len(batch)
        _mark_embedded(conn, plan)  # its plan was checked under the lock above, so this marks it
    # In chunk_vectors now: out of the cache. After the commit, not inside the write: a row deleted there would stay
    # locked for the whole indexed write, and another run keeping the same text would wait for it. A kill between
    # the two leaves rows that expire (lib/vector_cache.py).
    keep_replaced(conn, plan.model_id, list(replaced), list(replaced.values()))
    consume(conn, plan.model_id, [h for h, _ in rows.values()])
    adapted = ""
    if sizer and smallest < insert_batch_size and len(items) > smallest:
        adapted = (
            f"{len(items)} rows in {statements} statements of <= {smallest} (configured {insert_batch_size}): "
            f"{(sizer.per_row_s or 0) * 1000:.2f} ms per row measured, so {insert_batch_size} rows would take "
            f"~{(sizer.per_row_s or 0) * insert_batch_size:.2f} s of the {timeout_s:g} s statement timeout"
        )
    return VectorWrite(len(items), max(deleted, 0), statements, time.perf_counter() - started, adapted)


def _mark_embedded(conn: psycopg.Connection, plan: EmbeddingPlan) -> bool:
    """Mark the recording embedded for the plan's model and clear its error, in one statement, only if its chunk
    plan is still the one diffed; False when it is not (nothing is changed then)."""
    return (
        conn.execute(
            q(
                conn,
                """WITH cur AS (SELECT 1 FROM {s}.chunk_plans
                            WHERE recording_id = %(r)s AND model = %(m)s AND chunked_at = %(at)s),
                    cleared AS (DELETE FROM {s}.recording_errors
                                WHERE recording_id = %(r)s AND model = %(m)s AND EXISTS (SELECT 1 FROM cur))
               INSERT INTO {s}.embedded_recordings (recording_id, model, source_hash, chunk_count)
               SELECT %(r)s, %(m)s, %(h)s, %(n)s FROM cur
               ON CONFLICT (recording_id, model) DO UPDATE
               SET source_hash = EXCLUDED.source_hash, chunk_count = EXCLUDED.chunk_count, embedded_at = now()
               RETURNING 1""",
            ),
            {
                "r": plan.recording_id,
                "m": plan.model_id,
                "at": plan.chunked_at,
                "h": plan.source_hash,
                "n": plan.chunk_count,
            },
        ).fetchone()
        is not None
    )


def record_error(
    conn: psycopg.Connection,
    recording_id: str,
    model_id: str,
    asset: str,
    error: str,
    run_id: str | None,
    *,
    unreadable: bool = False,
) -> None:
    """Keep a recording's last error (visible in `status` and the completion check); cleared on success.
    ``unreadable``: the source row itself cannot be read (counted apart in `status`)."""
    conn.execute(
        q(
            conn,
            """INSERT INTO {s}.recording_errors (recording_id, model, source_hash, asset, error, run_id, unreadable)
           SELECT recording_id, %(m)s, content_hash, %(a)s, %(e)s, %(run)s, %(u)s
           FROM {s}.recordings WHERE recording_id = %(r)s
           ON CONFLICT (recording_id, model) DO UPDATE
           SET source_hash = EXCLUDED.source_hash, asset = EXCLUDED.asset, error = EXCLUDED.error,
               run_id = EXCLUDED.run_id, failed_at = now(), unreadable = EXCLUDED.unreadable,
               failures = CASE WHEN recording_errors.source_hash = EXCLUDED.source_hash
                               THEN recording_errors.failures + 1 ELSE 1 END""",
        ),
        {"r": recording_id, "m": model_id, "a": asset, "e": error[:4000], "run": run_id, "u": unreadable},
    )
