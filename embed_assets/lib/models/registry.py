"""The models this database holds vectors for, and which one is active. Dagster-free.

Every registered model is kept up to date by the same two assets, per recording; exactly one is *active*
(``active_model``): it serves ``embed_search``, ``embed-assets search`` and the health verdict, and every process
reads it from the database. Each model's vectors are a partition of ``chunk_vectors`` (``LIST (model)``) with a
dimension check and an ANN index of its own, so models of any dimensions coexist, a shadow model's writes never
touch the active model's heap or index, and dropping a model is dropping a table (deleting its rows instead would
churn the index for minutes, DESIGN.md principle 4).

``EMBED_MODEL`` chooses a fresh install's model, and replaces it for as long as no vector is stored; after that
the registry rules and a change of model goes through ``embed-assets model shadow | activate | drop``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from embed_assets.lib.db.names import q
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.indexes import IndexStrategy, build_index, current_strategy, default_strategy
from embed_assets.lib.models.specs import ModelSpec, resolve_model


@dataclass(frozen=True)
class Registered:
    spec: ModelSpec
    partition: str  # its table of vectors, a partition of chunk_vectors
    chunk_tokenizer: str  # the tokenizer whose boundaries cut its chunks (another model's, when shared)
    active: bool

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def state(self) -> str:
        return "active" if self.active else "shadow"


_REGISTERED = """
    SELECT m.model, m.provider, m.name, m.dimension, m.vectors, m.chunk_tokenizer, a.model IS NOT NULL
    FROM {s}.models m LEFT JOIN {s}.active_model a ON a.model = m.model
    ORDER BY a.model IS NULL, m.registered_at, m.model"""


def registered(conn: psycopg.Connection) -> list[Registered]:
    """Every registered model, the active one first."""
    out = []
    for model_id, provider, name, dim, partition, tokenizer, active in conn.execute(q(conn, _REGISTERED)).fetchall():
        spec = _spec(provider, name, dim, model_id)
        out.append(Registered(spec, partition, tokenizer, bool(active)))
    return out


def _spec(provider: str, name: str, dim: int, model_id: str) -> ModelSpec:
    try:
        spec = resolve_model(provider, name, dim)
    except ConfigError as e:
        raise ConfigError(f"registered model {model_id!r} cannot be used here: {e}") from None
    if spec.model_id != model_id:  # cannot happen through this module; a hand-edited row would
        raise ConfigError(
            f"registered model {model_id!r} resolves to {spec.model_id!r}; fix its row in the models table"
        )
    return spec


def active(conn: psycopg.Connection) -> Registered | None:
    regs = registered(conn)
    return regs[0] if regs and regs[0].active else None


def find(conn: psycopg.Connection, model_id: str) -> Registered | None:
    return next((r for r in registered(conn) if r.model_id == model_id), None)


def schema_lock(conn: psycopg.Connection) -> None:
    """The migrations' lock: registry changes never interleave with a migration or with each other."""
    from embed_assets.lib.db.migrations import MIGRATION_LOCK  # migrations build on this module

    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))


def shared_tokenizer(new: ModelSpec, source: Registered | None) -> str:
    """Whose tokenizer cuts a new model's chunks: the active model's where the new model reads at least as much
    per input (its chunks then fit, and both models embed the very same passages, so a comparison compares
    models, not chunkings); the new model's own where it reads less (e.g. MiniLM's 256 word pieces after
    text-embedding-3-small's 8,192 tokens). Chunking checks every chunk against the model's own limit anyway."""
    if source is not None and new.max_input_tokens >= source.spec.max_input_tokens:
        return source.chunk_tokenizer
    return new.tokenizer


def add_partition(
    conn: psycopg.Connection, spec: ModelSpec, chunk_tokenizer: str, index: IndexStrategy | None
) -> Registered:
    """Register ``spec``: its row, its partition (with a dimension check) and its ANN index. DDL, in the caller's
    transaction under ``schema_lock``."""
    n = conn.execute(
        q(conn, "SELECT coalesce(max(substring(vectors FROM '[0-9]+$')::int), 0) + 1 FROM {s}.models")
    ).fetchone()[0]
    partition = f"chunk_vectors_{n}"
    conn.execute(
        q(
            conn,
            """CREATE TABLE {s}.{part} PARTITION OF {s}.chunk_vectors
                   (CONSTRAINT {check} CHECK ({v}.vector_dims(embedding) = {dim}))
               FOR VALUES IN ({model})""",
            part=sql.Identifier(partition),
            check=sql.Identifier(f"{partition}_dimension"),
            dim=sql.Literal(spec.dimension),
            model=sql.Literal(spec.model_id),
        )
    )
    chosen = index or default_strategy(spec.dimension)
    build_index(conn, partition, chosen.name, spec.dimension)
    insert_row(conn, spec, partition, chunk_tokenizer)
    return Registered(spec, partition, chunk_tokenizer, False)


def insert_row(conn: psycopg.Connection, spec: ModelSpec, partition: str, chunk_tokenizer: str) -> None:
    """The registry's row for ``spec`` (its partition exists, or is about to be attached)."""
    conn.execute(
        q(
            conn,
            """INSERT INTO {s}.models (model, provider, name, dimension, vectors, chunk_tokenizer)
               VALUES (%s, %s, %s, %s, %s, %s)""",
        ),
        (spec.model_id, spec.provider, spec.name, spec.dimension, partition, chunk_tokenizer),
    )


def set_active(conn: psycopg.Connection, reg: Registered) -> None:
    """Make ``reg`` the active model and re-create embed_search for it, in the caller's transaction: readers see
    the old model or the new one, never a mix (function and pointer commit together)."""
    from embed_assets.lib.search.function import refresh_search_function  # search builds on the registry

    conn.execute(
        q(
            conn,
            """INSERT INTO {s}.active_model (singleton, model, dimension) VALUES (true, %s, %s)
               ON CONFLICT (singleton) DO UPDATE SET model = EXCLUDED.model, dimension = EXCLUDED.dimension,
                   activated_at = now()""",
        ),
        (reg.model_id, reg.spec.dimension),
    )
    refresh_search_function(conn)


def remove(conn: psycopg.Connection, reg: Registered) -> None:
    """Drop a model's partition and its rows (chunks, plans, markers, errors). Adopted vectors (vector_cache) stay:
    they were paid for, and serve the model again if it is ever registered again. DDL, in the caller's
    transaction under ``schema_lock``."""
    conn.execute(q(conn, "DROP TABLE {s}.{part}", part=sql.Identifier(reg.partition)))
    for table in ("chunks", "chunk_plans", "embedded_recordings", "recording_errors"):
        conn.execute(q(conn, "DELETE FROM {s}.{t} WHERE model = %s", t=sql.Identifier(table)), (reg.model_id,))
    conn.execute(q(conn, "DELETE FROM {s}.models WHERE model = %s"), (reg.model_id,))


def replaces(conn: psycopg.Connection, configured: ModelSpec, regs: list[Registered]) -> bool:
    """Whether ``configured`` takes the place of the registered model on first use (the fresh-install rule)."""
    return configured.model_id not in {r.model_id for r in regs} and len(regs) <= 1 and not _has_vectors(conn)


def ensure_models(conn: psycopg.Connection, configured: ModelSpec) -> list[Registered]:
    """The registered models, after applying the fresh-install rule: with no model registered, or only one that
    holds no vector yet, ``configured`` (EMBED_MODEL) becomes the registered, active model. Otherwise the
    registry is left alone (a configured model that is not registered is the configuration check's warning)."""
    regs = registered(conn)
    ids = {r.model_id for r in regs}
    if regs and regs[0].active and (configured.model_id in ids or len(regs) > 1 or _has_vectors(conn)):
        return regs
    with conn.transaction():
        schema_lock(conn)
        regs = registered(conn)
        if replaces(conn, configured, regs):
            conn.execute(q(conn, "DELETE FROM {s}.active_model"))
            for r in regs:
                remove(conn, r)
            add_partition(conn, configured, configured.tokenizer, None)
            _secure(conn)
            regs = registered(conn)
        if regs and not regs[0].active:
            target = next((r for r in regs if r.model_id == configured.model_id), regs[0])
            set_active(conn, target)
    return registered(conn)


def _secure(conn: psycopg.Connection) -> None:
    """A new partition is locked down like every table of ours, and open to the roles granted access."""
    from embed_assets.lib.db.migrations import lock_down, regrant

    lock_down(conn)
    regrant(conn)


def _has_vectors(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(q(conn, "SELECT EXISTS (SELECT 1 FROM {s}.chunk_vectors)")).fetchone()[0])


def index_strategy(conn: psycopg.Connection, reg: Registered) -> IndexStrategy | None:
    return current_strategy(conn, reg.partition)


@dataclass(frozen=True)
class Coverage:
    """How far a registered model is: recordings whose current transcript it has vectors of, and its vectors."""

    model_id: str
    state: str
    dimension: int
    recordings: int
    current: int
    vectors: int
    index: str

    @property
    def completion(self) -> float:
        return self.current / self.recordings if self.recordings else 1.0

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "dimension": self.dimension,
            "recordings": self.recordings,
            "embedded": self.current,
            "completion_pct": round(100 * self.completion, 3),
            "vectors": self.vectors,
            "index": self.index,
        }


def coverage(conn: psycopg.Connection, known: Mapping[str, tuple[int, int, int]] | None = None) -> list[Coverage]:
    """Every registered model's completion (the active one first), each number a query away for the user:
    embedded = recordings with a row in embedded_recordings for the model and their current content hash.
    ``known``: model -> (recordings, embedded, vectors) the caller has counted already (lib/health/status.py
    `db_status`, the same queries), so a model's vectors are not counted twice per run."""
    out = []
    for r in registered(conn):
        if known and r.model_id in known:
            total, current, vectors = known[r.model_id]
        else:
            total, current = conn.execute(
                q(
                    conn,
                    """SELECT count(*), count(e.recording_id) FROM {s}.recordings rec
                       LEFT JOIN {s}.embedded_recordings e ON e.recording_id = rec.recording_id AND e.model = %s
                            AND e.source_hash = rec.content_hash""",
                ),
                (r.model_id,),
            ).fetchone()
            vectors = conn.execute(q(conn, "SELECT count(*) FROM {s}.{p}", p=sql.Identifier(r.partition))).fetchone()[0]
        index = index_strategy(conn, r)
        out.append(
            Coverage(r.model_id, r.state, r.spec.dimension, total, current, vectors, index.name if index else "none")
        )
    return out
