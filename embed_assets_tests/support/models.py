"""Test helper: an empty model registry, with one model registered (as a fresh install has)."""

from __future__ import annotations

import psycopg

from embed_assets.lib.models import ModelSpec, resolve_model
from embed_assets.lib.models.registry import ensure_models, registered, remove, schema_lock

TEST_SPEC = resolve_model("openai", "text-embedding-3-small", 384)


def reset_models(conn: psycopg.Connection, spec: ModelSpec | None = TEST_SPEC) -> None:
    """Drop every registered model's table and row; then register ``spec`` as the active model (None: none)."""
    with conn.transaction():
        schema_lock(conn)
        conn.execute("DELETE FROM embed_assets.active_model")
        for r in registered(conn):
            remove(conn, r)
    if spec is not None:
        ensure_models(conn, spec)
