"""Adopt vectors already paid for: copy ``(text, embedding)`` rows of an existing table into the project's
vector cache, keyed by (model, sha256 of the text), so the chunks with that exact text are never sent again.

A vector is adopted only when it can be trusted to be the stated model's vector of that text: its dimension
must equal the model's, and a random sample is re-embedded with that model and compared (cosine similarity);
a table of another model's vectors, of vectors made from other text, or of another dimension is refused
whole, with the numbers. Only the source table is read; nothing is written there.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg import sql

from embed_assets.lib.chunking import content_hash
from embed_assets.lib.db.connection import first_line, register_vector_types
from embed_assets.lib.db.names import names, q
from embed_assets.lib.errors import ConfigError, EmbedAssetsError
from embed_assets.lib.models import ModelSpec
from embed_assets.lib.store import as_array

MIN_COSINE = 0.99  # OpenAI's vectors of one text vary by ~1e-3 between calls; another model or text: far below
BATCH = 1000


@dataclass
class AdoptReport:
    model: str
    table: str
    rows: int = 0  # rows read with text and a vector
    distinct_texts: int = 0
    adopted: int = 0  # new cache entries
    already_cached: int = 0
    sample_cosines: list[float] = field(default_factory=list)
    matched_chunks: int = 0  # current chunks of this model without a vector that the cache now covers
    matched_tokens: int = 0
    unchunked_recordings: int = 0  # registered recordings not chunked yet: their matches show as cache hits

    def saved_usd(self, spec: ModelSpec) -> float:
        return self.matched_tokens * spec.usd_per_million_tokens / 1_000_000


def _table(name: str) -> sql.Identifier:
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigError(f"--table {name!r}: give a table name or schema.table")
    return sql.Identifier(*parts)


def _check_columns(conn: psycopg.Connection, table: str, text_col: str, vec_col: str) -> None:
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if row[0] is None:
        raise ConfigError(f"table {table} does not exist in that database (or this role cannot see it)")
    types = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
    )
    for col, what in ((text_col, "--text-column"), (vec_col, "--embedding-column")):
        if col not in types:
            raise ConfigError(f"{table} has no column {col!r} ({what}); its columns: {', '.join(sorted(types))}")
    kind = types[vec_col].rsplit(".", 1)[-1]
    if kind not in ("vector", "halfvec"):
        raise ConfigError(
            f"{table}.{vec_col} is of type {types[vec_col]}, not a pgvector vector; adopt reads vector columns"
        )


def adopt(
    source: psycopg.Connection,
    store: psycopg.Connection,
    *,
    table: str,
    text_column: str,
    embedding_column: str,
    spec: ModelSpec,
    embed: Callable[[list[str]], np.ndarray],
    origin: str,
    sample_size: int = 8,
    min_cosine: float = MIN_COSINE,
    progress: Callable[[int], None] = lambda _: None,
) -> AdoptReport:
    """Verify, then copy. Raises ConfigError (nothing adopted) when the vectors cannot be trusted."""
    report = AdoptReport(spec.model_id, table)
    ident = _table(table)
    _check_columns(source, table, text_column, embedding_column)
    register_vector_types(source)
    register_vector_types(store)
    v = names(source).vector
    if v is None:
        raise ConfigError("pgvector is not installed in the database holding that table")
    t, e = sql.Identifier(text_column), sql.Identifier(embedding_column)
    dims = source.execute(
        sql.SQL(
            "SELECT min({v}.vector_dims({e}::{v}.vector)), max({v}.vector_dims({e}::{v}.vector)), count(*) FROM {tab} "
            "WHERE {e} IS NOT NULL AND {t} IS NOT NULL"
        ).format(v=sql.Identifier(v), e=e, t=t, tab=ident)  # fmt: skip
    ).fetchone()
    if not dims[2]:
        raise ConfigError(f"{table} holds no row with both {text_column} and {embedding_column}; nothing to adopt")
    if dims[0] != spec.dimension or dims[1] != spec.dimension:
        got = f"{dims[0]}" if dims[0] == dims[1] else f"{dims[0]} to {dims[1]}"
        raise ConfigError(
            f"{table}.{embedding_column} holds {got}-dim vectors but {spec.model_id} makes {spec.dimension}-dim "
            f"ones; state the model (and --dimensions) those vectors were made with"
        )
    _verify(source, ident, t, e, v, spec, embed, sample_size, min_cosine, report)
    report.rows = dims[2]
    seen: set[str] = set()
    with source.transaction():
        cur = source.cursor(name="embed_assets_adopt")
        cur.itersize = BATCH
        cur.execute(
            sql.SQL("SELECT {t}, {e}::{v}.vector FROM {tab} WHERE {e} IS NOT NULL AND {t} IS NOT NULL").format(
                t=t, e=e, v=sql.Identifier(v), tab=ident
            )
        )
        while rows := cur.fetchmany(BATCH):
            batch = []
            for text, vec in rows:
                h = content_hash(text)
                if h not in seen:
                    seen.add(h)
                    batch.append((spec.model_id, h, as_array(vec), origin))
            report.adopted += _insert(store, batch)
            progress(len(rows))
    report.distinct_texts = len(seen)
    report.already_cached = report.distinct_texts - report.adopted
    _matches(store, spec, report)
    return report


def _verify(
    source: psycopg.Connection,
    ident: sql.Identifier,
    t: sql.Identifier,
    e: sql.Identifier,
    v: str,
    spec: ModelSpec,
    embed: Callable[[list[str]], np.ndarray],
    sample_size: int,
    min_cosine: float,
    report: AdoptReport,
) -> None:
    """Re-embed a random sample of rows with the stated model and compare: one bad row refuses the table."""
    if sample_size <= 0:
        return
    rows = source.execute(
        sql.SQL(
            "SELECT {t}, {e}::{v}.vector FROM {tab} WHERE {e} IS NOT NULL AND {t} IS NOT NULL "
            "ORDER BY random() LIMIT %s"
        ).format(t=t, e=e, v=sql.Identifier(v), tab=ident),  # fmt: skip
        (sample_size,),
    ).fetchall()
    random.shuffle(rows)
    try:
        fresh = embed([r[0] for r in rows])
    except EmbedAssetsError as ex:
        raise ConfigError(
            f"cannot verify the vectors: embedding a sample with {spec.model_id} failed ({first_line(ex)}); "
            "adopt needs the provider of the stated model reachable"
        ) from None
    for (_, old), new in zip(rows, fresh, strict=True):
        a, b = as_array(old).astype(np.float64), np.asarray(new, dtype=np.float64)
        report.sample_cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0)))
    worst = min(report.sample_cosines)
    if worst < min_cosine:
        bad = sum(1 for c in report.sample_cosines if c < min_cosine)
        raise ConfigError(
            f"{bad} of {len(rows)} sampled vectors differ from {spec.model_id}'s embedding of their own text "
            f"(lowest cosine {worst:.3f} < {min_cosine}): they were made by another model, from other text, or "
            "with other dimensions; nothing adopted. State the model they came from with --model/--dimensions"
        )


def _insert(store: psycopg.Connection, batch: list[tuple]) -> int:
    if not batch:
        return 0
    with store.transaction():
        cur = store.cursor()
        cur.executemany(
            q(
                store,
                """INSERT INTO {s}.vector_cache (model, content_hash, embedding, origin) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (model, content_hash) DO NOTHING RETURNING 1""",
            ),
            batch,
            returning=True,
        )
        n = 0
        while True:
            n += len(cur.fetchall())
            if not cur.nextset():
                break
    return n


def _matches(store: psycopg.Connection, spec: ModelSpec, report: AdoptReport) -> None:
    row = store.execute(
        q(
            store,
            """SELECT count(*), coalesce(sum(c.token_count), 0) FROM {s}.chunks c
               JOIN {s}.vector_cache vc ON vc.model = c.model AND vc.content_hash = c.content_hash
               WHERE c.model = %(m)s AND NOT EXISTS (
                   SELECT 1 FROM {s}.chunk_vectors x WHERE x.recording_id = c.recording_id AND x.model = c.model
                      AND x.chunk_index = c.chunk_index AND x.content_hash = c.content_hash)""",
        ),
        {"m": spec.model_id},
    ).fetchone()
    report.matched_chunks, report.matched_tokens = int(row[0]), int(row[1])
    report.unchunked_recordings = store.execute(
        q(
            store,
            """SELECT count(*) FROM {s}.recordings r WHERE NOT EXISTS (
                   SELECT 1 FROM {s}.chunk_plans p WHERE p.recording_id = r.recording_id AND p.model = %s
                      AND p.source_hash = r.content_hash)""",
        ),
        (spec.model_id,),
    ).fetchone()[0]
