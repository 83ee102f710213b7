"""What the sensor needs from the source tables, read by cursor rather than by full scans."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from embed_assets.lib.db.names import q

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SourceChange:
    recording_id: str
    content_hash: str
    updated_at: datetime
    models: list[str]  # registered models this content is not embedded for yet (sorted)
    failed: bool  # ... and its last attempt at this content failed (the retry schedule's business)
    # The newest generation among the recording and those models (migration 9): it grows whenever the work is
    # needed again (a content change, a re-insert, a model registered again), so it belongs in the run key.
    version: int = 0

    @property
    def pending(self) -> bool:
        return bool(self.models)


# The last attempt at this content failed for a registered model.
_FAILED = """EXISTS (SELECT 1 FROM {s}.recording_errors x JOIN {s}.models m ON m.model = x.model
                      WHERE x.recording_id = r.recording_id AND x.source_hash = r.content_hash)"""
# Pending: some registered model (the active one, or a shadow being built) has no vectors of this content yet.
_CHANGES = (
    """
    SELECT r.recording_id, r.content_hash, r.updated_at, p.models, """  # noqa: S608 (constant SQL, composed by q())
    + _FAILED
    + """,
           greatest(r.generation, p.generation)
    FROM {s}.recordings r CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(m.model ORDER BY m.model), '{{}}'), coalesce(max(m.generation), 0)
        FROM {s}.models m
        WHERE NOT EXISTS (SELECT 1 FROM {s}.embedded_recordings e WHERE e.recording_id = r.recording_id
                          AND e.model = m.model AND e.source_hash = r.content_hash)) AS p(models, generation)
"""
)


def changes_since(
    conn: psycopg.Connection, after: tuple[datetime, str] | None, until: datetime, limit: int
) -> list[SourceChange]:
    """Recordings new or changed after the (updated_at, recording_id) cursor and at or before ``until``
    (a settle margin behind now, so a transaction that commits a moment late is not skipped), oldest first."""
    since, last_id = after or (EPOCH, "")
    rows = conn.execute(
        q(
            conn,
            _CHANGES
            + """WHERE (r.updated_at, r.recording_id) > (%(since)s, %(id)s) AND r.updated_at <= %(until)s
                 ORDER BY r.updated_at, r.recording_id LIMIT %(limit)s""",
        ),
        {"since": since, "id": last_id, "until": until, "limit": limit},
    ).fetchall()
    return [SourceChange(*r) for r in rows]


def pending_before(
    conn: psycopg.Connection,
    before: datetime,
    limit: int,
    skip: Iterable[str] = (),
    cancelled: dict[str, datetime] | None = None,
) -> list[SourceChange]:
    """Pending, never-failed recordings behind the cursor: what a very late commit could have hidden. Not those in
    ``skip`` (a run of theirs is queued or in progress), nor those whose run was cancelled (``cancelled``: id ->
    the run's creation) after the row was written. Filtered in SQL before the LIMIT, so any number of failed or
    unreadable rows behind the cursor cannot hide a late one. Used by the periodic reconcile pass (a full scan,
    so not every tick)."""
    cancelled = cancelled or {}
    rows = conn.execute(
        q(
            conn,
            _CHANGES  # noqa: S608 (constant SQL, composed by q())
            + """WHERE r.updated_at <= %(before)s AND cardinality(p.models) > 0 AND NOT """
            + _FAILED
            + """ AND NOT (r.recording_id = ANY(%(skip)s))
                 AND NOT EXISTS (SELECT 1 FROM unnest(%(cids)s::text[], %(cat)s::timestamptz[]) AS c(id, at)
                                 WHERE c.id = r.recording_id AND c.at >= r.updated_at)
                 ORDER BY r.updated_at, r.recording_id LIMIT %(limit)s""",
        ),
        {
            "before": before,
            "limit": limit,
            "skip": list(skip),
            "cids": list(cancelled),
            "cat": list(cancelled.values()),
        },
    ).fetchall()
    return [SourceChange(*r) for r in rows]


def changes_of(conn: psycopg.Connection, ids: Iterable[str]) -> dict[str, SourceChange]:
    """The current state of the recordings ``ids`` (those still in the source), by id."""
    rows = conn.execute(q(conn, _CHANGES + "WHERE r.recording_id = ANY(%s)"), (list(ids),)).fetchall()
    return {r[0]: SourceChange(*r) for r in rows}


def deletions_since(conn: psycopg.Connection, after_id: int, limit: int) -> tuple[list[str], int]:
    """Recording ids deleted after tombstone ``after_id`` and not loaded again since; and the new cursor."""
    rows = conn.execute(
        q(
            conn,
            """SELECT d.id, d.recording_id,
                  EXISTS (SELECT 1 FROM {s}.recordings r WHERE r.recording_id = d.recording_id)
           FROM {s}.deleted_recordings d WHERE d.id > %s ORDER BY d.id LIMIT %s""",
        ),
        (after_id, limit),
    ).fetchall()
    gone = list(dict.fromkeys(r[1] for r in rows if not r[2]))
    return gone, (rows[-1][0] if rows else after_id)


def all_recording_ids(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute(q(conn, "SELECT recording_id FROM {s}.recordings"))}


def present_ids(conn: psycopg.Connection, ids: list[str]) -> set[str]:
    """Which of ``ids`` have a row in `recordings`."""
    rows = conn.execute(q(conn, "SELECT recording_id FROM {s}.recordings WHERE recording_id = ANY(%s)"), (ids,))
    return {r[0] for r in rows}


def embedded_ids(conn: psycopg.Connection, model_id: str) -> set[str]:
    """Recordings whose vectors for ``model_id`` were computed from their current transcript."""
    return {
        r[0]
        for r in conn.execute(
            q(
                conn,
                """SELECT r.recording_id FROM {s}.recordings r JOIN {s}.embedded_recordings e
               ON e.recording_id = r.recording_id AND e.model = %s AND e.source_hash = r.content_hash""",
            ),
            (model_id,),
        )
    }


def source_hashes(conn: psycopg.Connection, ids: list[str]) -> dict[str, str]:
    return dict(
        conn.execute(
            q(conn, "SELECT recording_id, content_hash FROM {s}.recordings WHERE recording_id = ANY(%s)"), (ids,)
        ).fetchall()
    )


def model_generations(conn: psycopg.Connection) -> dict[str, int]:
    """Each registered model's generation (migration 9): a model registered again has a new one."""
    return dict(conn.execute(q(conn, "SELECT model, generation FROM {s}.models")).fetchall())


def db_now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def unreadable_ids(conn: psycopg.Connection) -> set[str]:
    """Recordings whose current source row cannot be read: only a change of the row can help them."""
    return {
        r[0]
        for r in conn.execute(
            q(
                conn,
                """SELECT x.recording_id FROM {s}.recording_errors x JOIN {s}.recordings r USING (recording_id)
                   WHERE x.unreadable AND x.source_hash = r.content_hash""",
            )
        )
    }
