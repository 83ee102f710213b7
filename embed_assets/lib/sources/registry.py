"""The project's record of an external source's recordings, kept in its own `recordings` table.

With a source definition, `recordings` holds one row per source recording (id, title, started_at and the
content hash of its transcript as the source stores it) and `transcript_segments` stays empty: the transcript
is read from the source when its partition runs. Everything built on `recordings` (chunks, vectors, errors,
tombstones, status, the sensor's cursor) then works as with the project's own tables: a changed hash bumps
`updated_at`, a removed row cascades to its chunks and vectors and leaves a tombstone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.sources.external import SourceRow
from embed_assets.lib.vector_cache import removal_grace

ORIGIN = "source"  # recordings.origin of the rows kept for EMBED_SOURCE (NULL: the project's own tables)


@dataclass
class RegistryChanges:
    added: int = 0
    changed: int = 0  # content hash differs: the recording is re-embedded (only its changed chunks)
    renamed: int = 0  # title or start time only
    removed: int = 0
    conflicts: int = 0  # ids already taken by a recording loaded into the project's tables: left alone


def registered_ids(conn: psycopg.Connection) -> set[str]:
    """The source's recordings in the registry (not those loaded into the project's tables)."""
    return {r[0] for r in conn.execute(q(conn, "SELECT recording_id FROM {s}.recordings WHERE origin = %s"), (ORIGIN,))}


def loaded_ids(conn: psycopg.Connection) -> set[str]:
    """Recordings loaded into the project's own tables (`load`, `sample`): a source pass leaves them alone."""
    return {r[0] for r in conn.execute(q(conn, "SELECT recording_id FROM {s}.recordings WHERE origin IS NULL"))}


def registry_counts(conn: psycopg.Connection) -> list[int]:
    """[the source's recordings, recordings loaded from files]: what a source pass compares ids against."""
    row = conn.execute(
        q(
            conn,
            "SELECT count(*) FILTER (WHERE origin = %s), count(*) FILTER (WHERE origin IS NULL) FROM {s}.recordings",
        ),
        (ORIGIN,),
    ).fetchone()
    return [int(row[0]), int(row[1])]


def loaded_among(conn: psycopg.Connection, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` loaded into the project's own tables."""
    return {
        r[0]
        for r in conn.execute(
            q(conn, "SELECT recording_id FROM {s}.recordings WHERE origin IS NULL AND recording_id = ANY(%s)"),
            (list(ids),),
        )
    }


def origin_of(conn: psycopg.Connection, recording_id: str) -> str | None:
    """'source', None (the project's tables), or '' when the recording is unknown."""
    row = conn.execute(
        q(conn, "SELECT coalesce(origin, '') FROM {s}.recordings WHERE recording_id = %s"), (recording_id,)
    ).fetchone()
    return "" if row is None else (row[0] or None)


def register(conn: psycopg.Connection, rows: Iterable[SourceRow]) -> RegistryChanges:
    """Insert new recordings, update changed ones (a row that did not change is not written); idempotent."""
    rows = list(rows)
    out = RegistryChanges()
    for i in range(0, len(rows), 1000):
        part = rows[i : i + 1000]
        added, changed, renamed, conflicts = conn.execute(
            q(
                conn,
                """WITH incoming AS (
                       SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[])
                              AS t(recording_id, title, started_at, content_hash)),
                   prev AS (
                       SELECT r.recording_id, r.content_hash, r.origin
                       FROM {s}.recordings r JOIN incoming USING (recording_id)),
                   upserted AS (
                       INSERT INTO {s}.recordings AS r
                              (recording_id, title, started_at, content_hash, segment_count, origin)
                       SELECT recording_id, title, started_at, content_hash, 0, %s FROM incoming
                       ON CONFLICT (recording_id) DO UPDATE
                       SET title = EXCLUDED.title, started_at = EXCLUDED.started_at,
                           content_hash = EXCLUDED.content_hash,
                           updated_at = CASE WHEN r.content_hash = EXCLUDED.content_hash THEN r.updated_at
                                             ELSE clock_timestamp() END
                       WHERE r.origin IS NOT DISTINCT FROM EXCLUDED.origin
                         AND (r.title, r.started_at, r.content_hash)
                             IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.started_at, EXCLUDED.content_hash)
                       RETURNING r.recording_id)
                   SELECT count(*) FILTER (WHERE p.recording_id IS NULL),
                          count(*) FILTER (WHERE p.content_hash <> i.content_hash),
                          count(*) FILTER (WHERE p.content_hash = i.content_hash),
                          (SELECT count(*) FROM prev WHERE prev.origin IS DISTINCT FROM %s)
                   FROM upserted u JOIN incoming i USING (recording_id) LEFT JOIN prev p USING (recording_id)""",
            ),
            (
                [r.recording_id for r in part],
                [r.title for r in part],
                [r.started_at for r in part],
                [r.content_hash for r in part],
                ORIGIN,
                ORIGIN,
            ),
        ).fetchone()
        out.added += added
        out.changed += changed
        out.renamed += renamed
        out.conflicts += conflicts
    return out


def remove(conn: psycopg.Connection, ids: list[str]) -> int:
    """Forget recordings gone from the source: their chunks, plans and errors go with them, their vectors into
    the vector cache for a grace period (one transaction per batch; the tombstones tell the sensor to delete their
    partitions)."""
    removed = 0
    for i in range(0, len(ids), 1000):
        part = ids[i : i + 1000]
        with conn.transaction():
            # Their vectors stay content-addressed for EMBED_VECTOR_CACHE_DAYS (the delete's trigger keeps them): a
            # recording that returns (a source table reloaded, a row back in the query) with the same text costs
            # nothing.
            removal_grace(conn)
            removed += conn.execute(
                q(conn, "DELETE FROM {s}.recordings WHERE recording_id = ANY(%s) AND origin = %s"), (part, ORIGIN)
            ).rowcount
    return removed


def set_segments_read(conn: psycopg.Connection, recording_id: str, content_hash: str, seqs: Sequence[int]) -> None:
    """Record what the chunker read of this transcript: how many segments, and their seqs (the integrity check's
    coverage reference for a source recording, whose segments are not in transcript_segments)."""
    conn.execute(
        q(
            conn,
            """UPDATE {s}.recordings SET segment_count = %(n)s, segment_seqs = %(seqs)s
               WHERE recording_id = %(r)s AND content_hash = %(h)s
                 AND (segment_count, segment_seqs) IS DISTINCT FROM (%(n)s, %(seqs)s::integer[])""",
        ),
        {"n": len(seqs), "seqs": list(seqs), "r": recording_id, "h": content_hash},
    )


def clear_unreadable(conn: psycopg.Connection, recording_id: str, model_id: str) -> None:
    conn.execute(
        q(conn, "DELETE FROM {s}.recording_errors WHERE recording_id = %s AND model = %s AND unreadable"),
        (recording_id, model_id),
    )
