"""The source tables: `recordings` and `transcript_segments`. Loading is atomic per recording."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.db.rows import write_rows
from embed_assets.lib.transcripts import Segment, Transcript

LoadStatus = Literal["loaded", "unchanged", "changed"]


# The recording's transaction-scoped lock, as an expression of one parameter (the recording id).
LOCK_RECORDING = "pg_advisory_xact_lock(hashtextextended(%s, 7))"


def lock_recording(conn: psycopg.Connection, recording_id: str) -> None:
    """Serialize writers of one recording (loads, chunk and vector writes) until the transaction ends."""
    conn.execute(f"SELECT {LOCK_RECORDING}", (recording_id,))


def upsert_transcript(conn: psycopg.Connection, t: Transcript) -> LoadStatus:
    """Store one transcript in one transaction. Identical content changes nothing; changed content
    replaces the segments and bumps `updated_at` (what the sensor and `status` call *changed*)."""
    new_hash = t.content_hash
    with conn.transaction():
        lock_recording(conn, t.recording_id)
        # Compared in SQL, not read back: a started_at stored by an older version outside what Python can read
        # (year 1 with a positive offset) must not make every later load of the id fail.
        row = conn.execute(
            q(
                conn,
                """SELECT content_hash, (title, started_at) IS NOT DISTINCT FROM (%s::text, %s::timestamptz)
                   FROM {s}.recordings WHERE recording_id = %s""",
            ),
            (t.title, t.started_at, t.recording_id),
        ).fetchone()
        if row is not None and row[0] == new_hash:
            if not row[1]:
                conn.execute(
                    q(conn, "UPDATE {s}.recordings SET title = %s, started_at = %s WHERE recording_id = %s"),
                    (t.title, t.started_at, t.recording_id),
                )
            return "unchanged"
        if row is None:
            conn.execute(
                q(
                    conn,
                    """INSERT INTO {s}.recordings (recording_id, title, started_at, content_hash, segment_count)
                   VALUES (%s, %s, %s, %s, %s)""",
                ),
                (t.recording_id, t.title, t.started_at, new_hash, len(t.segments)),
            )
        else:
            conn.execute(q(conn, "DELETE FROM {s}.transcript_segments WHERE recording_id = %s"), (t.recording_id,))
            conn.execute(
                q(
                    conn,
                    """UPDATE {s}.recordings SET title = %s, started_at = %s, content_hash = %s, segment_count = %s,
                          updated_at = clock_timestamp()
                   WHERE recording_id = %s""",
                ),
                (t.title, t.started_at, new_hash, len(t.segments), t.recording_id),
            )
        write_rows(  # seq: the turn's source position (gaps where turns without speech were skipped)
            conn,
            "transcript_segments",
            ("recording_id", "seq", "speaker", "start_s", "end_s", "text"),
            [(t.recording_id, s.seq, s.speaker, s.start_s, s.end_s, s.text) for s in t.segments],
        )
    return "loaded" if row is None else "changed"


@dataclass(frozen=True)
class SourceRecording:
    recording_id: str
    content_hash: str
    segments: tuple[Segment, ...]


def read_recording(conn: psycopg.Connection, recording_id: str) -> SourceRecording | None:
    """A consistent snapshot of one recording's segments (None when it is not in the source): one statement,
    so one snapshot, and one round trip."""
    rows = conn.execute(
        q(
            conn,
            """SELECT r.content_hash, s.speaker, s.text, s.start_s, s.end_s, s.seq
           FROM {s}.recordings r LEFT JOIN {s}.transcript_segments s ON s.recording_id = r.recording_id
           WHERE r.recording_id = %s ORDER BY s.seq""",
        ),
        (recording_id,),
    ).fetchall()
    if not rows:
        return None
    return SourceRecording(recording_id, rows[0][0], tuple(Segment(*r[1:]) for r in rows if r[5] is not None))
