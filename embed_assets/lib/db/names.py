"""Where the project's objects live, and SQL composed with those names.

Every table, view, function, index and the migration ledger live in one schema of the project's own
(``EMBED_SCHEMA``, default ``embed_assets``), never in ``public``: on Supabase ``public`` is served to anyone
holding the anon key, and the user's own tables there may share our names. pgvector lives wherever an admin
installed it (``extensions`` on Supabase, ``public`` elsewhere), so its types, functions, operators and
operator classes are qualified with that schema too.

Why qualify every name instead of setting ``search_path``: behind a transaction pooler (PgBouncer, Supabase's
pooler on port 6543) a ``SET`` lasts only until the pooler hands the next transaction another server
connection, and startup ``options`` are refused by PgBouncer. Qualified names need no session state at all.
Templates use ``{s}`` for our schema and ``{v}`` for pgvector's: ``q(conn, "SELECT ... FROM {s}.chunks")``.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import psycopg
from psycopg import sql

from embed_assets.lib.errors import ConfigError
from embed_assets.lib.settings import load_settings

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Names:
    schema: str  # the project's own schema
    vector: str | None  # the schema pgvector is installed in (None: not installed)


def schema_name() -> str:
    """EMBED_SCHEMA, validated: a plain lower-case identifier, and never ``public``."""
    name = load_settings().schema
    if not _IDENT.match(name):
        raise ConfigError(
            f"EMBED_SCHEMA={name!r} is not a plain schema name; use lower-case letters, digits and _ "
            "(e.g. embed_assets)"
        )
    if name.startswith("pg_"):
        raise ConfigError(
            f"EMBED_SCHEMA={name!r}: names starting with pg_ are PostgreSQL's own (pg_temp is per session, "
            "pg_catalog the system's); use a schema of the project's own, e.g. embed_assets"
        )
    if name in ("public", "extensions", "pg_catalog", "information_schema"):
        raise ConfigError(
            f"EMBED_SCHEMA={name!r} is shared with other software (and on Supabase served to the anon role); "
            "use a schema of the project's own, e.g. embed_assets"
        )
    return name


_CACHE: weakref.WeakKeyDictionary[psycopg.Connection, Names] = weakref.WeakKeyDictionary()

_VECTOR_SCHEMA = """SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'vector'"""


def names(conn: psycopg.Connection) -> Names:
    """The schema names for this connection's database (pgvector's looked up once per connection)."""
    found = _CACHE.get(conn)
    if found is None or found.vector is None:
        row = conn.execute(_VECTOR_SCHEMA).fetchone()
        found = Names(schema_name(), row[0] if row else None)
        _CACHE[conn] = found
    return found


def forget(conn: psycopg.Connection) -> None:
    """Drop the cached names (after the extension was created, or the schema moved)."""
    _CACHE.pop(conn, None)


def q(conn: psycopg.Connection, template: str, **parts: sql.Composable) -> sql.Composed:
    """``template`` with ``{s}`` (our schema) and ``{v}`` (pgvector's schema) as quoted identifiers."""
    n = names(conn)
    if n.vector is None and "{v}" in template:
        raise ConfigError(
            "the pgvector extension is not installed in this database; an admin runs "
            "CREATE EXTENSION vector (on Supabase: CREATE EXTENSION vector WITH SCHEMA extensions, or Database > "
            "Extensions in the dashboard)"
        )
    return sql.SQL(template).format(s=sql.Identifier(n.schema), v=sql.Identifier(n.vector or "public"), **parts)
