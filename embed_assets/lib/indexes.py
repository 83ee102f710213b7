"""The ANN index of each model's vectors (its partition of chunk_vectors), by strategy. Chosen by measurement
(`make bench`, README table):

- ``bit``: HNSW over ``binary_quantize(embedding)::bit(D)`` with Hamming distance, and an exact cosine
  re-rank of the candidates it returns. Inserts cost a fraction of a float HNSW's, the index is ~32x
  smaller, and it accepts up to 64,000 dimensions (a ``vector`` HNSW stops at 2,000, so it cannot index
  text-embedding-3-large at all).
- ``halfvec``: HNSW over ``embedding::halfvec(D)`` (up to 4,000 dimensions), cosine.
- ``vector``: pgvector's default HNSW over the full-precision column (up to 2,000 dimensions).

The column has no dimension (models of different sizes share the table, one partition each, lib/models/registry.py),
so every indexed expression casts to the model's dimension, as pgvector documents for mixed dimensions. Search
and the index must agree, so the strategy in force is read from the index definition itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from embed_assets.lib.db.names import names, q

DEFAULT_INDEX = "bit"


def index_name(partition: str) -> str:
    return f"{partition}_hnsw"


@dataclass(frozen=True)
class IndexStrategy:
    name: str
    expression: str  # indexed expression; {dim} and {v} (pgvector's schema) filled in
    opclass: str
    query: str  # the ORDER BY distance for a query vector %(q)s; {dim} and {v} filled in
    max_dim: int
    rerank: bool  # candidates come from a coarse distance and are re-ranked by exact cosine

    def ddl(self, conn: psycopg.Connection, partition: str, dim: int) -> sql.Composed:
        return q(
            conn,
            f"CREATE INDEX {{name}} ON {{s}}.{{table}} USING hnsw (({self.expression}) {self.opclass})".replace(
                "{dim}", str(int(dim))
            ),
            name=sql.Identifier(index_name(partition)),
            table=sql.Identifier(partition),
        )

    def order_by(self, dim: int) -> str:
        """The distance expression, with {v} left for the caller's q()."""
        return self.query.replace("{dim}", str(int(dim)))


STRATEGIES: dict[str, IndexStrategy] = {
    "bit": IndexStrategy(
        "bit",
        "{v}.binary_quantize(embedding)::bit({dim})",
        "{v}.bit_hamming_ops",
        "{v}.binary_quantize(embedding)::bit({dim}) OPERATOR({v}.<~>) {v}.binary_quantize(%(q)s::{v}.vector({dim}))",
        64_000,
        True,
    ),
    "halfvec": IndexStrategy(
        "halfvec",
        "embedding::{v}.halfvec({dim})",
        "{v}.halfvec_cosine_ops",
        "embedding::{v}.halfvec({dim}) OPERATOR({v}.<=>) %(q)s::{v}.halfvec({dim})",
        4_000,
        False,
    ),
    "vector": IndexStrategy(
        "vector",
        "embedding::{v}.vector({dim})",
        "{v}.vector_cosine_ops",
        "embedding::{v}.vector({dim}) OPERATOR({v}.<=>) %(q)s::{v}.vector({dim})",
        2_000,
        False,
    ),
}


def strategy(name: str) -> IndexStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown index strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def default_strategy(dim: int) -> IndexStrategy:
    s = STRATEGIES[DEFAULT_INDEX]
    return s if dim <= s.max_dim else STRATEGIES["bit"]


def current_strategy(conn: psycopg.Connection, partition: str) -> IndexStrategy | None:
    """The strategy of the index on a model's partition, from its definition (None: no ANN index, exact search)."""
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
        (names(conn).schema, index_name(partition)),
    ).fetchone()
    if row is None:
        return None
    for s in STRATEGIES.values():
        if s.opclass.rsplit(".", 1)[-1] in row[0]:
            return s
    return None


def build_index(conn: psycopg.Connection, partition: str, name: str, dim: int) -> IndexStrategy:
    """(Re)build a model's ANN index as ``name``, inside the caller's transaction (search, reading the old index
    or none, never sees a half-built one). The search function is the caller's business."""
    s = strategy(name)
    if dim > s.max_dim:
        raise ValueError(f"a {name} HNSW index holds at most {s.max_dim} dimensions; this model has {dim}")
    conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
    conn.execute(q(conn, "DROP INDEX IF EXISTS {s}.{name}", name=sql.Identifier(index_name(partition))))
    conn.execute(s.ddl(conn, partition, dim))
    return s
