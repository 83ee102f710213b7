"""Vectors already paid for, content-addressed by (model, hash of the chunk text), and what the provider billed.

What the provider answers is kept here in a fast write committed BEFORE the recording's indexed write (one INSERT
of binary parameters into ``vector_cache``, whose only index is its primary key, no ANN index): a
statement timeout, a kill or a failed sibling request then costs the write, never the purchase, and every later
plan (the same run's next window, the small-batch retry, a run days later) finds the vectors by
``lib/store.plan_embeddings``'s cache lookup. Every billed response is one row of ``provider_usage`` in the same
transaction, so the run's metadata and the daily cost figure count what was paid for, and nothing that was
copied, reused or adopted.

Bounded growth: a bought row (``expires_at`` set) goes once a write that uses it has committed (the vector then
lives in ``chunk_vectors``, which plans also search); one no write used (a recording that never succeeds, a
text edited away meanwhile) goes after EMBED_VECTOR_CACHE_DAYS. The vectors of a removed recording are kept the
same way (``keep_removed``), and so are those of chunks an edit replaced (``keep_replaced``), so a recording
that returns, or an edit that is reverted, within the grace period costs nothing. Adopted rows
(``embed-assets adopt``, no ``expires_at``) stay until their model is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg

from embed_assets.lib.db.connection import register_vector_types
from embed_assets.lib.db.names import q
from embed_assets.lib.settings import vector_cache_days

BOUGHT = "provider"  # vector_cache.origin of a vector the provider answered for this project
REMOVED = "removed"  # of a vector kept from a removed recording
USAGE_KEPT_DAYS = 90  # provider_usage rows older than this are pruned (the figures read 24 hours)


@dataclass(frozen=True)
class Billed:
    """One provider call's bill: requests sent (failed attempts included), inputs answered, tokens billed."""

    requests: int
    inputs: int
    tokens: int


def keep_bought(
    conn: psycopg.Connection,
    model_id: str,
    hashes: Sequence[str],
    vectors: np.ndarray | Sequence[np.ndarray],
    billed: Billed,
    *,
    run_id: str | None = None,
    prune: bool = False,
) -> None:
    """Keep the provider's answer for ``hashes`` and its bill, in one committed transaction. ``prune`` also drops
    expired cache rows and old usage rows (once per step is plenty)."""
    grace = f"{vector_cache_days() * 86400:.0f} seconds"
    with conn.transaction():
        if prune:
            _x(conn, "DELETE FROM {s}.vector_cache WHERE expires_at < now()")
            _x(conn, "DELETE FROM {s}.provider_usage WHERE billed_at < now() - make_interval(days => %s)",
               (USAGE_KEPT_DAYS,))  # fmt: skip
        if len(hashes):
            register_vector_types(conn)
            # One statement, vectors as a binary array parameter: no COPY, which row security refuses to a worker
            # role, and no temporary table (a privilege, and catalog churn); ON CONFLICT tolerates a text another
            # run bought meanwhile. ~0.1 s for 1,000 x 1536, ~1.5% of the indexed write (bench/paid_once.py).
            _x(
                conn,
                """INSERT INTO {s}.vector_cache (model, content_hash, embedding, origin, expires_at)
                   SELECT DISTINCT ON (h) %(m)s, h, e, %(o)s, now() + %(g)s::interval
                   FROM unnest(%(h)b::text[], %(e)b::{v}.vector[]) AS bought (h, e) ORDER BY h
                   ON CONFLICT (model, content_hash) DO UPDATE SET expires_at = EXCLUDED.expires_at
                   WHERE vector_cache.expires_at IS NOT NULL""",
                {"m": model_id, "o": BOUGHT, "g": grace, "h": list(hashes), "e": list(vectors)},
            )
        if billed.inputs or billed.tokens:
            _x(
                conn,
                "INSERT INTO {s}.provider_usage (model, requests, inputs, tokens, run_id) VALUES (%s, %s, %s, %s, %s)",
                (model_id, billed.requests, billed.inputs, billed.tokens, run_id),
            )


def consume(conn: psycopg.Connection, model_id: str, hashes: Sequence[str]) -> None:
    """Drop the bought (and kept-from-removed) rows a write used, once it committed (a write that rolled back
    keeps them). Adopted rows stay."""
    if hashes:
        _x(
            conn,
            """DELETE FROM {s}.vector_cache
               WHERE model = %s AND content_hash = ANY(%s) AND expires_at IS NOT NULL""",
            (model_id, list(hashes)),
        )


def keep_replaced(
    conn: psycopg.Connection, model_id: str, hashes: Sequence[str], vectors: Sequence[np.ndarray]
) -> None:
    """Keep the vectors a write deleted because their chunks were edited away (every one was paid for), for
    EMBED_VECTOR_CACHE_DAYS: an edit that is reverted (A -> B -> A) then costs nothing. Called after the write
    committed (a row inserted inside it would make another run keeping the same text wait for the whole write)."""
    if not len(hashes):
        return
    register_vector_types(conn)
    grace = f"{vector_cache_days() * 86400:.0f} seconds"
    _x(
        conn,
        """INSERT INTO {s}.vector_cache (model, content_hash, embedding, origin, expires_at)
           SELECT DISTINCT ON (h) %(m)s, h, e, %(o)s, now() + %(g)s::interval
           FROM unnest(%(h)b::text[], %(e)b::{v}.vector[]) AS kept (h, e) ORDER BY h
           ON CONFLICT (model, content_hash) DO UPDATE
           SET expires_at = greatest(vector_cache.expires_at, EXCLUDED.expires_at)
           WHERE vector_cache.expires_at IS NOT NULL""",
        {"m": model_id, "o": REMOVED, "g": grace, "h": list(hashes), "e": list(vectors)},
    )


def removal_grace(conn: psycopg.Connection) -> None:
    """For this transaction: EMBED_VECTOR_CACHE_DAYS as the grace of the vectors that deleting a recording keeps
    (the BEFORE DELETE trigger of migration 12 reads it; a DELETE by hand gets 7 days)."""
    conn.execute("SELECT set_config('embed_assets.vector_cache_days', %s, true)", (str(vector_cache_days()),))


def keep_removed(conn: psycopg.Connection, recording_ids: Sequence[str]) -> int:
    """Keep the vectors of recordings about to be removed (every model), content-addressed for
    EMBED_VECTOR_CACHE_DAYS: a recording that returns with the same text within that time costs nothing. Call it
    before the delete, in the same transaction. Returns the number of cache rows written or extended."""
    if not recording_ids:
        return 0
    grace = f"{vector_cache_days() * 86400:.0f} seconds"
    cur = conn.execute(
        q(
            conn,
            """INSERT INTO {s}.vector_cache (model, content_hash, embedding, origin, expires_at)
               SELECT DISTINCT ON (model, content_hash) model, content_hash, embedding, %(o)s, now() + %(g)s::interval
               FROM {s}.chunk_vectors WHERE recording_id = ANY(%(r)s) ORDER BY model, content_hash
               ON CONFLICT (model, content_hash) DO UPDATE
               SET expires_at = greatest(vector_cache.expires_at, EXCLUDED.expires_at)
               WHERE vector_cache.expires_at IS NOT NULL""",
        ),
        {"o": REMOVED, "g": grace, "r": list(recording_ids)},
    )
    return cur.rowcount


@dataclass(frozen=True)
class Spend:
    """What the provider billed for one model over a period (provider_usage)."""

    inputs: int
    tokens: int


def billed_since(conn: psycopg.Connection, model_id: str, hours: float) -> Spend:
    """Inputs embedded and tokens billed by the provider for ``model_id`` in the last ``hours``."""
    row = conn.execute(
        q(
            conn,
            """SELECT coalesce(sum(inputs), 0), coalesce(sum(tokens), 0) FROM {s}.provider_usage
               WHERE model = %s AND billed_at > now() - make_interval(secs => %s)""",
        ),
        (model_id, hours * 3600),
    ).fetchone()
    return Spend(int(row[0]), int(row[1]))


def _x(conn: psycopg.Connection, template: str, params: object = None) -> None:
    conn.execute(q(conn, template), params)
