"""What this session wrote, counted in the database: the summary's recordings, chunks and vectors.

A session is the recordings it ran and the time since it started, by the database's clock: `embedded_at` in
`embedded_recordings` and `chunk_vectors` is the writing transaction's now(), so a row written by this
session has embedded_at >= `started_at`. A user reproduces every count with the queries below and that
timestamp (the summary prints it), in the project's schema (EMBED_SCHEMA, default embed_assets). Dagster-free;
the only SQL of the console lives here."""

from __future__ import annotations

from datetime import datetime

import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.sources.discovery import db_now


class SessionCounts:
    def __init__(self, conn: psycopg.Connection, model_id: str) -> None:
        self.model_id = model_id
        self.started_at: datetime = db_now(conn)

    def embedded(self, conn: psycopg.Connection, ids: list[str]) -> dict[str, int]:
        """Recordings of ``ids`` written (embedded or found unchanged) by this session: id -> chunk count."""
        return dict(
            conn.execute(
                q(
                    conn,
                    """SELECT recording_id, chunk_count FROM {s}.embedded_recordings
                       WHERE model = %s AND embedded_at >= %s AND recording_id = ANY(%s)""",
                ),
                (self.model_id, self.started_at, ids),
            ).fetchall()
        )

    def vectors(self, conn: psycopg.Connection, ids: list[str]) -> dict[str, int]:
        """Vectors written by this session per recording of ``ids`` (recordings with none are left out)."""
        return dict(
            conn.execute(
                q(
                    conn,
                    """SELECT recording_id, count(*) FROM {s}.chunk_vectors
                       WHERE model = %s AND embedded_at >= %s AND recording_id = ANY(%s)
                       GROUP BY recording_id""",
                ),
                (self.model_id, self.started_at, ids),
            ).fetchall()
        )

    def present(self, conn: psycopg.Connection, ids: list[str]) -> set[str]:
        """Recordings of ``ids`` still in the recordings table (the others were deleted from the source: removed)."""
        return {
            r[0]
            for r in conn.execute(
                q(conn, "SELECT recording_id FROM {s}.recordings WHERE recording_id = ANY(%s)"), (ids,)
            ).fetchall()
        }
