"""Integrity of the stored chunks and vectors, for the `chunk_integrity` check. Each count is a query a
user can run: a chunk without its vector, a vector without its chunk, zero vectors, coverage gaps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from embed_assets.lib.db.names import q


@dataclass
class Integrity:
    embedded_recordings: int
    missing_vectors: int  # chunk of an embedded (current) recording with no vector for its text
    orphan_vectors: int  # vector whose chunk (text) no longer exists
    zero_vectors: int
    chunk_count_mismatch: int  # recordings whose chunk rows differ from their plan's count
    coverage_gaps: int  # recordings with a segment read that no chunk covers, or a chunk not bounded by ones read
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


def check_integrity(conn: psycopg.Connection, model_id: str, recording_ids: Sequence[str] | None = None) -> Integrity:
    """Every recording, or only ``recording_ids`` (the recordings a run wrote: each query then probes their
    rows by index instead of scanning every table, which grows with the corpus and ran once per run)."""
    p = {"m": model_id, "ids": list(recording_ids or [])}

    def only(alias: str) -> sql.Composable:
        if recording_ids is None:
            return sql.SQL("")
        return sql.SQL("AND {}.recording_id = ANY(%(ids)s)").format(sql.Identifier(alias))

    current = """SELECT e.recording_id FROM {s}.embedded_recordings e
                 JOIN {s}.chunk_plans cp ON cp.recording_id = e.recording_id AND cp.model = e.model
                 WHERE e.model = %(m)s AND e.source_hash = cp.source_hash {only}"""
    cur = q(conn, current, only=only("e"))
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
           WHERE v.model = %(m)s AND c.recording_id IS NULL {only}""",
            only=only("v"),
        ),
        p,
    ).fetchall()
    zero = conn.execute(
        q(
            conn,
            "SELECT recording_id FROM {s}.chunk_vectors v "
            "WHERE model = %(m)s AND {v}.vector_norm(embedding) = 0 {only}",
            only=only("v"),
        ),
        p,
    ).fetchall()
    mismatch = conn.execute(
        q(
            conn,
            """SELECT cp.recording_id FROM {s}.chunk_plans cp
           LEFT JOIN (SELECT recording_id, count(*) AS n FROM {s}.chunks c WHERE model = %(m)s {only_c} GROUP BY 1) c
                  ON c.recording_id = cp.recording_id
           WHERE cp.model = %(m)s AND coalesce(c.n, 0) <> cp.chunk_count {only}""",
            only=only("cp"),
            only_c=only("c"),
        ),
        p,
    ).fetchall()
    # Coverage of the recordings chunked from their current transcript, against the segments the chunker read:
    # for the project's own recordings the segments stored in transcript_segments, for a source's (EMBED_SOURCE,
    # whose transcripts stay in the user's tables) the seqs recorded when it was chunked (recordings.segment_seqs;
    # NULL for one not chunked since migration 11: not checked until it is). Seqs have gaps where turns without
    # speech were skipped, so 0..segment_count-1 means nothing. A recording has a gap when a chunk starts or ends
    # at a seq that is not a segment read, or when a segment lies in no chunk's [first_seq, last_seq]: before a
    # chunk's start yet after every earlier chunk's end (`reach`), or after the end of all of them. Index probes
    # per chunk, not a scan of every segment: ~0.5 s for 3,000 recordings of 300 segments and 30 chunks here (a
    # sweep over all segments in seq order took 1.2 s).
    gaps = conn.execute(
        q(
            conn,
            """WITH cur AS (
               SELECT r.recording_id FROM {s}.recordings r
               JOIN {s}.chunk_plans cp ON cp.recording_id = r.recording_id AND cp.model = %(m)s
                                   AND cp.source_hash = r.content_hash
               WHERE r.origin IS NULL {only}),
           spans AS (
               SELECT c.recording_id, c.first_seq, c.last_seq,
                      coalesce(max(c.last_seq) OVER (PARTITION BY c.recording_id ORDER BY c.first_seq, c.last_seq
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), -1) AS reach
               FROM {s}.chunks c JOIN cur USING (recording_id) WHERE c.model = %(m)s),
           ends AS (
               SELECT cur.recording_id, coalesce(max(c.last_seq), -1) AS reach FROM cur
               LEFT JOIN {s}.chunks c ON c.recording_id = cur.recording_id AND c.model = %(m)s
               GROUP BY cur.recording_id)
           SELECT sp.recording_id FROM spans sp
           WHERE sp.first_seq > sp.last_seq
              OR NOT EXISTS (SELECT 1 FROM {s}.transcript_segments s
                             WHERE s.recording_id = sp.recording_id AND s.seq = sp.first_seq)
              OR NOT EXISTS (SELECT 1 FROM {s}.transcript_segments s
                             WHERE s.recording_id = sp.recording_id AND s.seq = sp.last_seq)
              OR EXISTS (SELECT 1 FROM {s}.transcript_segments s
                         WHERE s.recording_id = sp.recording_id AND s.seq > sp.reach AND s.seq < sp.first_seq)
           UNION
           SELECT e.recording_id FROM ends e
           WHERE (SELECT max(s.seq) FROM {s}.transcript_segments s WHERE s.recording_id = e.recording_id) > e.reach""",
            only=only("r"),
        ),
        p,
    ).fetchall()
    gaps += conn.execute(
        q(
            conn,
            """WITH cur AS (
               SELECT r.recording_id, r.segment_seqs AS seqs FROM {s}.recordings r
               JOIN {s}.chunk_plans cp ON cp.recording_id = r.recording_id AND cp.model = %(m)s
                                   AND cp.source_hash = r.content_hash
               WHERE r.origin IS NOT NULL AND r.segment_seqs IS NOT NULL {only}),
           spans AS (
               SELECT c.recording_id, cur.seqs, c.first_seq, c.last_seq,
                      coalesce(max(c.last_seq) OVER (PARTITION BY c.recording_id ORDER BY c.first_seq, c.last_seq
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), -1) AS reach
               FROM {s}.chunks c JOIN cur USING (recording_id) WHERE c.model = %(m)s),
           ends AS (
               SELECT cur.recording_id, (SELECT max(x) FROM unnest(cur.seqs) x) AS last,
                      coalesce(max(c.last_seq), -1) AS reach FROM cur
               LEFT JOIN {s}.chunks c ON c.recording_id = cur.recording_id AND c.model = %(m)s
               GROUP BY cur.recording_id, cur.seqs)
           SELECT sp.recording_id FROM spans sp
           WHERE sp.first_seq > sp.last_seq
              OR NOT sp.first_seq = ANY(sp.seqs) OR NOT sp.last_seq = ANY(sp.seqs)
              OR EXISTS (SELECT 1 FROM unnest(sp.seqs) x WHERE x > sp.reach AND x < sp.first_seq)
           UNION
           SELECT e.recording_id FROM ends e WHERE e.last > e.reach""",
            only=only("r"),
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
