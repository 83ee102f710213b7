"""Cosine KNN over chunk_vectors (HNSW), returning the DESIGN.md fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector


@dataclass(frozen=True)
class Hit:
    recording_id: str
    chunk_index: int
    score: float
    first_seq: int
    last_seq: int
    start_s: float | None
    end_s: float | None
    speakers: list[str]
    content: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def search(
    conn: psycopg.Connection,
    query_vector: np.ndarray,
    model_id: str,
    k: int = 5,
    recording_id: str | None = None,
) -> list[Hit]:
    """The k nearest chunks by cosine similarity (score = 1 - cosine distance). Uses the HNSW index;
    with a recording filter, pgvector's iterative scan keeps looking until k matches are found."""
    register_vector(conn)
    with conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(40, 2 * k)),))
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        rows = conn.execute(
            """SELECT v.recording_id, v.chunk_index, 1 - (v.embedding <=> %(q)s) AS score,
                      c.first_seq, c.last_seq, c.start_s, c.end_s, c.speakers, c.content
               FROM (SELECT recording_id, model, chunk_index, content_hash, embedding
                     FROM chunk_vectors
                     WHERE model = %(model)s AND (%(rid)s::text IS NULL OR recording_id = %(rid)s)
                     ORDER BY embedding <=> %(q)s
                     LIMIT %(k)s) v
               JOIN chunks c ON c.recording_id = v.recording_id AND c.model = v.model
                            AND c.chunk_index = v.chunk_index AND c.content_hash = v.content_hash
               ORDER BY score DESC""",
            {"q": query_vector.astype(np.float32), "model": model_id, "rid": recording_id, "k": k},
        ).fetchall()
    return [Hit(r[0], r[1], float(r[2]), r[3], r[4], r[5], r[6], list(r[7]), r[8]) for r in rows]
