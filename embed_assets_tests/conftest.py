"""Test fixtures: one real embedded PostgreSQL (pgvector) per session under a temporary EMBED_HOME."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

_ENV = (
    "EMBED_DATABASE_URL",
    "EMBED_DAGSTER_DATABASE_URL",
    "EMBED_PROVIDER",
    "EMBED_MODEL",
    "EMBED_DIMENSIONS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "EMBED_PROBE",
)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def embed_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from embed_assets.lib.db.connection import stop_embedded_server

    home = Path(tmp_path_factory.mktemp("home"))
    saved = {k: os.environ.pop(k, None) for k in _ENV}
    os.environ["EMBED_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield home
    stop_embedded_server(home)
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in _ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="session")
def db_url(embed_home: Path) -> str:
    from embed_assets.lib.db.connection import vector_database_url
    from embed_assets.lib.db.migrations import migrate

    url = vector_database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, 384)
    return url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection to an emptied vector store (all source and output rows removed), with one model registered
    (text-embedding-3-small at 384 dims; a run configured for another replaces it, the store being empty)."""
    from embed_assets_tests.support.models import reset_models

    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(
            "TRUNCATE embed_assets.recordings, embed_assets.vector_cache, embed_assets.held_removals, "
            "embed_assets.provider_usage CASCADE"
        )
        reset_models(c)
        yield c


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch):
    """A loopback OpenAI-compatible server, with the env pointing the project at it (384-dim model)."""
    from embed_assets_tests.support.openai_server import FakeOpenAI

    with FakeOpenAI() as server:
        monkeypatch.setenv("EMBED_PROVIDER", "openai")
        monkeypatch.setenv("EMBED_MODEL", "text-embedding-3-small")
        monkeypatch.setenv("EMBED_DIMENSIONS", "384")
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield server


@pytest.fixture
def dagster_db(db_url: str) -> Iterator[str]:
    """The URL of a database of its own for one test's Dagster instance (dropped afterwards)."""
    from embed_assets_tests.support.dagster_dev import drop_database, fresh_database

    name = f"dagster_test_{os.getpid()}"
    yield fresh_database(db_url, name)
    drop_database(db_url, name)
