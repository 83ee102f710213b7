"""Least privilege: what a worker role and an application role may reach in the project's schema.

The schema's owner (the role that ran ``embed-assets migrate``) holds every object. Nobody else reaches
anything (lib/db/migrations.py ``lock_down``) until named here:
- ``runtime``: a worker without DDL rights (sensor, runs, ``status``, ``search``): reads and writes rows.
- ``search``: an application (e.g. a Supabase RPC as ``authenticated``): calls ``embed_search`` and reads
  the chunk text and vectors it returns, nothing else (no transcripts, no errors, no state).
Each grant also creates the row-level-security policy that lets that role see rows, and is remembered in
``role_grants``, so a later migration's ``lock_down`` keeps it.
"""

from __future__ import annotations

from typing import Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from embed_assets.lib.db.migrations import current_role, lock_down
from embed_assets.lib.db.names import names, q
from embed_assets.lib.errors import ConfigError

Access = Literal["runtime", "search"]
SEARCH_TABLES = ("chunks", "chunk_vectors", "active_model", "models")


def grant(conn: psycopg.Connection, role: str, access: Access) -> list[str]:
    """Grant ``role`` the ``access`` level; returns the statements run (for the user to see)."""
    n = names(conn)
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        raise ConfigError(f"role {role!r} does not exist; create it first (CREATE ROLE {role} LOGIN PASSWORD ...)")
    if (
        n.vector
        and not conn.execute(
            "SELECT has_schema_privilege(%s, %s, 'USAGE') OR has_schema_privilege(%s, 'USAGE WITH GRANT OPTION')",
            (role, n.vector, n.vector),
        ).fetchone()[0]
    ):
        raise ConfigError(
            f"role {role!r} cannot use schema {n.vector!r}, where pgvector lives, and {current_role(conn)!r} may "
            f"not grant it; an admin runs: GRANT USAGE ON SCHEMA {n.vector} TO {role};"
        )
    r, s = sql.Identifier(role), sql.Identifier(n.schema)
    tables = [t[0] for t in conn.execute(_TABLES, (n.schema,))]
    if access == "search":
        tables = [t for t in tables if t in SEARCH_TABLES]
    stmts: list[sql.Composed] = [sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r)]
    if n.vector and not conn.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, n.vector)).fetchone()[0]:
        stmts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(n.vector), r))
    verbs = "SELECT, INSERT, UPDATE, DELETE" if access == "runtime" else "SELECT"
    for t in tables:
        table = sql.Identifier(n.schema, t)
        policy = sql.Identifier(f"{role}_{access}")
        stmts.append(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(verbs), table, r))
        stmts.append(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(policy, table))
        stmts.append(
            sql.SQL("CREATE POLICY {} ON {} FOR {} TO {} USING (true){}").format(
                policy,
                table,
                sql.SQL("ALL" if access == "runtime" else "SELECT"),
                r,
                sql.SQL(" WITH CHECK (true)" if access == "runtime" else ""),
            )
        )
    if access == "runtime":
        stmts.append(sql.SQL("GRANT SELECT ON {}.transcript_chunks TO {}").format(s, r))
        stmts.append(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r))
        stmts.append(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(s, r))
    else:
        for fn in conn.execute(_SEARCH_FUNCTIONS, (n.schema,)):
            stmts.append(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(fn[0]), r))
    try:
        with conn.transaction():
            for st in stmts:
                conn.execute(st)
            conn.execute(
                q(
                    conn,
                    """INSERT INTO {s}.role_grants (role, access) VALUES (%s, %s)
                       ON CONFLICT (role) DO UPDATE SET access = EXCLUDED.access""",
                ),
                (role, access),
            )
    except pg_errors.InsufficientPrivilege as e:
        raise ConfigError(
            f"role {current_role(conn)!r} may not grant on schema {n.schema!r} ({str(e).strip().splitlines()[0]}); "
            "run `embed-assets grant` as the schema's owner (the role that ran `embed-assets migrate`)"
        ) from None
    return [st.as_string(conn) for st in stmts]


def revoke(conn: psycopg.Connection, role: str) -> None:
    """Take every grant of ``role`` back (its policies go too)."""
    n = names(conn)
    with conn.transaction():
        conn.execute(q(conn, "DELETE FROM {s}.role_grants WHERE role = %s"), (role,))
        for t in [t[0] for t in conn.execute(_TABLES, (n.schema,))]:
            for access in ("runtime", "search"):
                conn.execute(
                    sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(
                        sql.Identifier(f"{role}_{access}"), sql.Identifier(n.schema, t)
                    )
                )
        lock_down(conn)
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(n.schema), sql.Identifier(role)))


_TABLES = """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1"""
_SEARCH_FUNCTIONS = """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                       WHERE n.nspname = %s AND p.proname = 'embed_search'"""
