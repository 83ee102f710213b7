"""Versioned, idempotent schema migrations, safe to run twice or from two processes at once.

Each migration runs once, in order, inside one transaction that holds a cluster-wide advisory lock, and is
recorded in `schema_migrations`; a second process waits for the lock and then finds nothing left to do.
The vector table's dimension follows the configured model when it is created; a later model of another
dimension is reported by the `embedding_config_valid` check (see `vector_dimension`), never mixed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from embed_assets.lib.indexes import default_strategy

# pg_advisory_xact_lock key: a constant of our own ("embedasm" in ASCII).
_MIGRATION_LOCK = 0x656D626564_61736D & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[psycopg.Connection, int], None]


def _source_tables(conn: psycopg.Connection, dim: int) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute(
        """
        CREATE TABLE recordings (
            recording_id  text PRIMARY KEY,
            title         text,
            started_at    timestamptz,
            content_hash  text NOT NULL,
            segment_count integer NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now()
        )"""
    )
    conn.execute("CREATE INDEX recordings_updated_at_idx ON recordings (updated_at, recording_id)")
    conn.execute(
        """
        CREATE TABLE transcript_segments (
            recording_id text NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
            seq          integer NOT NULL,
            speaker      text NOT NULL,
            start_s      double precision,
            end_s        double precision,
            text         text NOT NULL,
            PRIMARY KEY (recording_id, seq)
        )"""
    )


def _chunk_tables(conn: psycopg.Connection, dim: int) -> None:
    # Chunk plans, written by the transcript_chunks asset. One row per chunk of a recording, per model
    # (the tokenizer, hence the boundaries, depend on the model).
    conn.execute(
        """
        CREATE TABLE chunks (
            recording_id text NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            chunk_index  integer NOT NULL,
            content      text NOT NULL,
            first_seq    integer NOT NULL,
            last_seq     integer NOT NULL,
            start_s      double precision,
            end_s        double precision,
            speakers     text[] NOT NULL,
            token_count  integer NOT NULL,
            content_hash text NOT NULL,
            PRIMARY KEY (recording_id, model, chunk_index)
        )"""
    )
    conn.execute(
        """
        CREATE TABLE chunk_plans (
            recording_id text NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            source_hash  text NOT NULL,
            chunk_count  integer NOT NULL,
            chunker      text NOT NULL,
            chunked_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, model)
        )"""
    )


def _vector_tables(conn: psycopg.Connection, dim: int) -> None:
    # Vectors, written by the chunk_embeddings asset. The content hash doubles as the "never pay twice"
    # cache key: (model, content_hash) finds a vector for identical text anywhere in the table.
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE chunk_vectors (
                recording_id text NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
                model        text NOT NULL,
                chunk_index  integer NOT NULL,
                content_hash text NOT NULL,
                embedding    vector({dim}) NOT NULL,
                embedded_at  timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (recording_id, model, chunk_index)
            )"""
        ).format(dim=sql.Literal(dim))
    )
    conn.execute("CREATE INDEX chunk_vectors_hash_idx ON chunk_vectors (model, content_hash)")
    conn.execute(default_strategy(dim).ddl(dim))  # the measured default (lib/indexes.py)
    conn.execute(
        """
        CREATE TABLE embedded_recordings (
            recording_id text NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            source_hash  text NOT NULL,
            chunk_count  integer NOT NULL,
            embedded_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, model)
        )"""
    )
    # The SQL surface users query for RAG (DESIGN.md): a chunk and its vector, joined on the content hash
    # so a vector is never shown beside text it was not computed from.
    conn.execute(
        """
        CREATE VIEW transcript_chunks AS
        SELECT c.recording_id, c.chunk_index, c.content, c.first_seq, c.last_seq, c.start_s, c.end_s,
               c.speakers, c.token_count, c.content_hash, c.model, v.embedding, v.embedded_at
        FROM chunks c
        LEFT JOIN chunk_vectors v
          ON v.recording_id = c.recording_id AND v.model = c.model
         AND v.chunk_index = c.chunk_index AND v.content_hash = c.content_hash"""
    )


def _automation_tables(conn: psycopg.Connection, dim: int) -> None:
    # Tombstones of deleted recordings, so the sensor finds deletions by cursor instead of a full scan.
    conn.execute(
        """
        CREATE TABLE deleted_recordings (
            id           bigserial PRIMARY KEY,
            recording_id text NOT NULL,
            deleted_at   timestamptz NOT NULL DEFAULT now()
        )"""
    )
    conn.execute(
        """
        CREATE FUNCTION embed_assets_recording_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO deleted_recordings (recording_id) VALUES (OLD.recording_id);
            RETURN OLD;
        END $$"""
    )
    conn.execute(
        """CREATE TRIGGER recordings_deleted AFTER DELETE ON recordings
           FOR EACH ROW EXECUTE FUNCTION embed_assets_recording_deleted()"""
    )
    # The last error of each recording that failed (per recording, even inside a many-partition run).
    conn.execute(
        """
        CREATE TABLE recording_errors (
            recording_id text NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            source_hash  text NOT NULL,
            asset        text NOT NULL,
            error        text NOT NULL,
            run_id       text,
            failures     integer NOT NULL DEFAULT 1,
            failed_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, model)
        )"""
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "source tables", _source_tables),
    Migration(2, "chunk tables", _chunk_tables),
    Migration(3, "vector tables and transcript_chunks view", _vector_tables),
    Migration(4, "deletion tombstones and per-recording errors", _automation_tables),
)


def migrate(conn: psycopg.Connection, dimension: int) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call (empty when up to date)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for m in MIGRATIONS:
            if m.version in done:
                continue
            m.apply(conn, dimension)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
            applied.append(m.version)
    return applied


def schema_version(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0 "
        "ELSE (SELECT coalesce(max(version), 0) FROM schema_migrations) END"
    ).fetchone()
    return int(row[0]) if row else 0


def vector_dimension(conn: psycopg.Connection) -> int | None:
    """The declared dimension of chunk_vectors.embedding, or None when the table does not exist."""
    row = conn.execute(
        """SELECT a.atttypmod FROM pg_attribute a
           WHERE a.attrelid = to_regclass('chunk_vectors') AND a.attname = 'embedding'"""
    ).fetchone()
    return int(row[0]) if row and row[0] and row[0] > 0 else None
