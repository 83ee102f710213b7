"""Bulk row writes: COPY, or INSERTs where row-level security applies to the writing role.

COPY is the fast path (binary for vectors: DESIGN.md principle 4), and it is what the schema's owner (the
usual single-role deployment) uses. But Postgres refuses ``COPY FROM`` into a table whose row-level security
applies to the current role (FeatureNotSupported), and the project's tables have row security on
(lib/db/migrations.py ``lock_down``), so a worker role without DDL rights (``embed-assets grant --access
runtime``) writes the same rows with pipelined INSERTs (psycopg ``executemany``), vectors as binary
parameters. Which path applies is asked of the server once per connection and table.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import psycopg
from psycopg import sql

from embed_assets.lib.db.names import names, q

_RLS: weakref.WeakKeyDictionary[psycopg.Connection, dict[str, bool]] = weakref.WeakKeyDictionary()


def row_security_applies(conn: psycopg.Connection, table: str) -> bool:
    cache = _RLS.setdefault(conn, {})
    if table not in cache:
        cache[table] = bool(
            conn.execute("SELECT row_security_active(%s::regclass)", (f"{names(conn).schema}.{table}",)).fetchone()[0]
        )
    return cache[table]


def write_rows(
    conn: psycopg.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple],
    binary_types: Sequence[str] | None = None,
) -> None:
    """Write ``rows`` into ``{schema}.{table}`` in one statement's worth of work (COPY) or one pipeline of
    INSERTs. ``binary_types`` (e.g. ``["text", "int4", "vector"]``) selects binary COPY / parameters."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    if row_security_applies(conn, table):
        marks = sql.SQL(", ").join(sql.Placeholder() if binary_types is None else sql.SQL("%b") for _ in columns)
        with conn.cursor() as cur:
            cur.executemany(
                q(
                    conn,
                    "INSERT INTO {s}.{t} ({cols}) VALUES ({marks})",
                    t=sql.Identifier(table),
                    cols=cols,
                    marks=marks,
                ),
                rows,
            )
        return
    fmt = sql.SQL(" WITH (FORMAT BINARY)" if binary_types is not None else "")
    with conn.cursor().copy(
        q(conn, "COPY {s}.{t} ({cols}) FROM STDIN{fmt}", t=sql.Identifier(table), cols=cols, fmt=fmt)
    ) as copy:
        if binary_types is not None:
            copy.set_types(list(binary_types))
        for row in rows:
            copy.write_row(row)
