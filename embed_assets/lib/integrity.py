"""Integrity of the stored chunks and vectors, for the `chunk_integrity` check. Each count is a query a
user can run: a chunk without its vector, a vector without its chunk, zero vectors, coverage gaps."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

from embed_assets.lib.db.names import q


@dataclass
class Integrity:
    embedded_recordings: int
    missing_vectors: int  # chunk of an embedded (current) recording with no vector for its text
    orphan_vectors: int  # vector whose chunk (text) no longer exists
    zero_vectors: int
    chunk_count_mismatch: int  # recordings whose chunk rows differ from their plan's count
    coverage_gaps: int  # recordings whose chunks skip a segment or miss the first/last one
    examples: list[str]

    @property
    def ok(self) -> bool:
        return not (
            self.missing_vectors
            or self.orphan_vectors
            or self.zero_vectors
            or self.chunk_count_mismatch
            or self.coverage_gaps
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_integrity(conn: psycopg.Connection, model_id: str) -> Integrity:
    p = {"m": model_id}
    current = """SELECT e.recording_id FROM {s}.embedded_recordings e
                 JOIN {s}.chunk_plans cp ON cp.recording_id = e.recording_id AND cp.model = e.model
                 WHERE e.model = %(m)s AND e.source_hash = cp.source_hash"""
    cur = q(conn, current)
    embedded = conn.execute(q(conn, "SELECT count(*) FROM ({current}) x", current=cur), p).fetchone()[0]
    missing = conn.execute(
        q(
            conn,
            """SELECT c.recording_id FROM {s}.chunks c
            LEFT JOIN {s}.chunk_vectors v ON v.recording_id = c.recording_id AND v.model = c.model
                 AND v.chunk_index = c.chunk_index AND v.content_hash = c.content_hash
            WHERE c.model = %(m)s AND v.recording_id IS NULL AND c.recording_id IN ({current})""",
            current=cur,
        ),
        p,
    ).fetchall()
    orphans = conn.execute(
        q(
            conn,
            """SELECT v.recording_id FROM {s}.chunk_vectors v
           LEFT JOIN {s}.chunks c ON c.recording_id = v.recording_id AND c.model = v.model
                AND c.chunk_index = v.chunk_index AND c.content_hash = v.content_hash
           WHERE v.model = %(m)s AND c.recording_id IS NULL""",
        ),
        p,
    ).fetchall()
    zero = conn.execute(
        q(conn, "SELECT recording_id FROM {s}.chunk_vectors WHERE model = %(m)s AND {v}.vector_norm(embedding) = 0"), p
    ).fetchall()
    mismatch = conn.execute(
        q(
            conn,
            """SELECT cp.recording_id FROM {s}.chunk_plans cp
           LEFT JOIN (SELECT recording_id, count(*) AS n FROM {s}.chunks WHERE model = %(m)s GROUP BY 1) c
                  ON c.recording_id = cp.recording_id
           WHERE cp.model = %(m)s AND coalesce(c.n, 0) <> cp.chunk_count""",
        ),
        p,
    ).fetchall()
    gaps = conn.execute(
        q(
            conn,
            """WITH ordered AS (
               SELECT recording_id, chunk_index, first_seq, last_seq,
                      lag(last_seq) OVER (PARTITION BY recording_id ORDER BY chunk_index) AS prev_last
               FROM {s}.chunks WHERE model = %(m)s)
           SELECT o.recording_id FROM ordered o JOIN {s}.recordings r USING (recording_id)
           JOIN {s}.chunk_plans cp ON cp.recording_id = o.recording_id AND cp.model = %(m)s
                               AND cp.source_hash = r.content_hash
           GROUP BY o.recording_id, r.segment_count
           HAVING min(o.first_seq) <> 0 OR max(o.last_seq) <> r.segment_count - 1
               OR bool_or(o.prev_last IS NOT NULL AND o.first_seq > o.prev_last + 1)""",
        ),
        p,
    ).fetchall()
    examples = list(dict.fromkeys(r[0] for r in [*missing, *orphans, *zero, *mismatch, *gaps]))[:10]
    return Integrity(
        embedded,
        len(missing),
        len(orphans),
        len(zero),
        len({r[0] for r in mismatch}),
        len({r[0] for r in gaps}),
        examples,
    )
