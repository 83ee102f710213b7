"""Changing the model: shadow a new one, activate it, drop the old one. Dagster-free; `embed-assets model` runs it.

A shadow model is built by the same partitioned assets as the active one (every registered model is kept current
per recording), so its backfill is an ordinary backfill; search keeps reading the active model's partition and
index, which the shadow's writes never touch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.indexes import build_index, default_strategy, strategy
from embed_assets.lib.models.registry import (
    Registered,
    _secure,
    active,
    add_partition,
    find,
    registered,
    remove,
    schema_lock,
    set_active,
    shared_tokenizer,
)
from embed_assets.lib.models.specs import ModelSpec
from embed_assets.lib.search.function import refresh_search_function
from embed_assets.lib.sources.discovery import embedded_ids
from embed_assets.lib.tokenizers import token_counter


@dataclass(frozen=True)
class Estimate:
    """What building ``spec``'s vectors will send to the provider: the distinct chunk texts of the active model
    that have no vector of ``spec`` yet (adopted or already embedded), counted by ``spec``'s own tokenizer."""

    model_id: str
    recordings: int
    texts: int
    tokens: int
    usd: float
    shared_chunks: bool  # the new model embeds the active model's very chunks (else: it is chunked anew)

    def describe(self) -> str:
        how = "the active model's chunks" if self.shared_chunks else "chunks of its own (estimated from the active's)"
        price = f"~${self.usd:,.2f}" if self.usd else "no charge (local or unpriced model)"
        return (
            f"{self.model_id}: {self.recordings:,} recordings, {self.texts:,} distinct chunk texts to embed "
            f"({how}), {self.tokens:,} tokens, {price}"
        )


def estimate(
    conn: psycopg.Connection, spec: ModelSpec, progress: Callable[[int, int], None] = lambda done, total: None
) -> Estimate:
    regs = registered(conn)
    source = regs[0] if regs else None
    shared = source is not None and shared_tokenizer(spec, source) == source.chunk_tokenizer
    recordings = conn.execute(q(conn, "SELECT count(*) FROM {s}.recordings")).fetchone()[0]
    if source is None:
        return Estimate(spec.model_id, recordings, 0, 0, 0.0, False)
    texts = [
        r[0]
        for r in conn.execute(
            q(
                conn,
                """SELECT DISTINCT ON (c.content_hash) c.content FROM {s}.chunks c
                   WHERE c.model = %(a)s
                     AND NOT EXISTS (SELECT 1 FROM {s}.vector_cache x WHERE x.model = %(m)s
                                     AND x.content_hash = c.content_hash)
                     AND NOT EXISTS (SELECT 1 FROM {s}.chunk_vectors v WHERE v.model = %(m)s
                                     AND v.content_hash = c.content_hash)""",
            ),
            {"a": source.model_id, "m": spec.model_id},
        )
    ]
    counter = token_counter(spec.tokenizer)
    tokens = 0
    for lo in range(0, len(texts), 2000):
        tokens += sum(counter.count_many(texts[lo : lo + 2000]))
        progress(min(lo + 2000, len(texts)), len(texts))
    return Estimate(
        spec.model_id, recordings, len(texts), tokens, tokens * spec.usd_per_million_tokens / 1_000_000, shared
    )


def shadow(conn: psycopg.Connection, spec: ModelSpec, index: str | None = None) -> Registered:
    """Register ``spec`` beside the active model: its partition, its ANN index (``index`` or the measured
    default), and whose chunks it embeds. Needs DDL rights (the schema's owner)."""
    chosen = strategy(index) if index else default_strategy(spec.dimension)
    if spec.dimension > chosen.max_dim:
        raise ConfigError(
            f"a {chosen.name} HNSW index holds at most {chosen.max_dim} dimensions; {spec.model_id} has "
            f"{spec.dimension}: use --index bit"
        )
    with conn.transaction():
        schema_lock(conn)
        regs = registered(conn)
        if any(r.model_id == spec.model_id for r in regs):
            raise ConfigError(f"{spec.model_id} is already registered; `embed-assets status` shows its progress")
        reg = add_partition(conn, spec, shared_tokenizer(spec, regs[0] if regs else None), chosen)
        if not regs:
            set_active(conn, reg)
        _secure(conn)
    return find(conn, spec.model_id)  # type: ignore[return-value]


@dataclass(frozen=True)
class Gap:
    """Recordings the active model serves that ``model_id`` does not (yet): what search would miss after a switch."""

    model_id: str
    active_id: str
    recordings: int
    served_by_active: int
    served_by_new: int
    lost: int
    examples: list[str]  # up to 5 of the lost recordings

    def describe(self) -> str:
        return (
            f"{self.model_id} has vectors of {self.served_by_new:,} of {self.recordings:,} recordings "
            f"({self.active_id}: {self.served_by_active:,}); search would miss {self.lost:,} recording(s) that "
            f"{self.active_id} serves" + (f" (e.g. {', '.join(self.examples)})" if self.examples else "")
        )


def gap(conn: psycopg.Connection, model_id: str, active_id: str) -> Gap:
    active_ids, new_ids = embedded_ids(conn, active_id), embedded_ids(conn, model_id)
    total = conn.execute(q(conn, "SELECT count(*) FROM {s}.recordings")).fetchone()[0]
    lost = sorted(active_ids - new_ids)
    return Gap(model_id, active_id, total, len(active_ids), len(new_ids), len(lost), lost[:5])


def activate(conn: psycopg.Connection, model_id: str, force: bool = False) -> tuple[Registered, Gap | None]:
    """Make ``model_id`` the model search serves, for every reader at once (the pointer and embed_search are
    replaced in one transaction). Refused while it lacks vectors of a recording the active model serves, unless
    ``force``; the Gap says what search then misses."""
    with conn.transaction():
        schema_lock(conn)
        regs = registered(conn)
        reg = next((r for r in regs if r.model_id == model_id), None)
        if reg is None:
            known = ", ".join(r.model_id for r in regs) or "none"
            raise ConfigError(
                f"{model_id} is not registered (registered: {known}); `embed-assets model shadow` it first"
            )
        current = next((r for r in regs if r.active), None)
        if current is not None and current.model_id == model_id:
            return reg, None
        g = gap(conn, model_id, current.model_id) if current else None
        if g is not None and g.lost and not force:
            raise ConfigError(
                f"{g.describe()}. Wait for its backfill (`embed-assets status` shows each model's completion; "
                "`embed-assets embed` or a UI backfill builds it), or pass --force to switch now"
            )
        set_active(conn, reg)
    return find(conn, model_id), g  # type: ignore[return-value]


def drop(conn: psycopg.Connection, model_id: str) -> int:
    """Remove a model that is not active: its partition (vectors and index: a DROP TABLE, no index churn) and its
    rows. Returns the vectors removed."""
    with conn.transaction():
        schema_lock(conn)
        reg = find(conn, model_id)
        if reg is None:
            raise ConfigError(f"{model_id} is not registered; nothing to drop")
        if reg.active:
            others = [r.model_id for r in registered(conn) if not r.active]
            hint = (
                f"activate another first (`embed-assets model activate {others[0]}`)"
                if others
                else "register and activate another first"
            )
            raise ConfigError(f"{model_id} is the active model; search serves it. To drop it, {hint}")
        vectors = conn.execute(
            q(conn, "SELECT count(*) FROM {s}.chunk_vectors WHERE model = %s"), (model_id,)
        ).fetchone()[0]
        remove(conn, reg)
    return int(vectors)


def reindex(conn: psycopg.Connection, model_id: str | None, name: str) -> Registered:
    """Rebuild a model's ANN index (default: the active model's) as strategy ``name``; where it is the active
    model, embed_search is re-created for it in the same transaction (search never sees a mismatch)."""
    with conn.transaction():
        schema_lock(conn)
        reg = find(conn, model_id) if model_id else active(conn)
        if reg is None:
            raise ConfigError(f"model {model_id!r} is not registered (`embed-assets status` lists them)")
        try:
            build_index(conn, reg.partition, name, reg.spec.dimension)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if reg.active:
            refresh_search_function(conn)
    return reg
