"""embedding_config_valid's properties one by one, each failing for its own reason with its fix."""

from __future__ import annotations

import psycopg
import pytest

from embed_assets.lib.health.config import check_configuration
from embed_assets.lib.models import resolve_model

MINI = lambda: resolve_model("local", "all-MiniLM-L6-v2")  # noqa: E731


def test_a_valid_local_configuration_passes(conn: psycopg.Connection, db_url: str) -> None:
    report = check_configuration(MINI, lambda: db_url, api_key_present=False)
    assert report.ok and report.problems == []
    assert report.facts["table_dimension"] == 384 and report.facts["pgvector"].startswith("0.8")


@pytest.mark.parametrize(
    ("provider", "model", "dims", "expected"),
    [
        ("huggingface", "x", None, "EMBED_PROVIDER='huggingface' is not known"),
        ("local", "bge-large", None, "not a bundled local model"),
        ("openai", "my-model", None, "set EMBED_DIMENSIONS"),
        ("openai", "text-embedding-ada-002", 256, "does not support EMBED_DIMENSIONS=256"),
    ],
)
def test_unknown_provider_or_model(db_url: str, provider: str, model: str, dims, expected: str) -> None:
    report = check_configuration(lambda: resolve_model(provider, model, dims), lambda: db_url, True)
    assert not report.ok and expected in report.problems[0]


def test_missing_key_for_openai(db_url: str) -> None:
    spec = lambda: resolve_model("openai", "text-embedding-3-small", 384)  # noqa: E731
    report = check_configuration(spec, lambda: db_url, api_key_present=False)
    assert not report.ok and "OPENAI_API_KEY is not set" in report.problems[0]


def test_unreachable_database() -> None:
    url = "postgresql://nobody:secret-pw@127.0.0.1:1/none"
    report = check_configuration(MINI, lambda: url, False)
    assert (
        not report.ok
        and "cannot reach the database" in report.problems[0]
        and "EMBED_DATABASE_URL" in report.problems[0]
    )
    assert "secret-pw" not in report.problems[0] and "EMBED_DATABASE_URL" in report.problems[0]


def test_database_without_pgvector(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS no_vector")
        c.execute("CREATE DATABASE no_vector")
        c.execute("DROP ROLE IF EXISTS no_ext_role")
        c.execute("CREATE ROLE no_ext_role LOGIN")
    url = db_url.replace("/embed_assets?", "/no_vector?")
    try:
        # A role that may create it (here the superuser): not a problem, `migrate` creates it.
        report = check_configuration(MINI, lambda: url, False)
        assert report.ok and str(report.facts["pgvector"]).startswith("not installed yet"), report.problems
        # A role that may not: the one line an admin needs.
        report = check_configuration(MINI, lambda: url.replace("postgres:@", "no_ext_role:@"), False)
        assert not report.ok and "pgvector extension is not installed" in report.problems[0]
        assert "may not create it; an admin runs CREATE EXTENSION vector" in report.problems[0]
    finally:
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS no_vector WITH (FORCE)")
            c.execute("DROP ROLE IF EXISTS no_ext_role")


def test_a_configured_model_replaces_the_registered_one_only_while_no_vector_exists(
    conn: psycopg.Connection, db_url: str
) -> None:
    report = check_configuration(MINI, lambda: db_url, False)  # registered: text-embedding-3-small@384, empty
    assert report.ok and "in place of text-embedding-3-small@384" in str(report.facts["models"]), report.problems
    conn.execute("INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES ('r', 'h', 1)")
    conn.execute(
        """INSERT INTO embed_assets.chunk_vectors (recording_id, model, chunk_index, content_hash, embedding)
           VALUES ('r', 'text-embedding-3-small@384', 0, 'h', array_fill(0.1, ARRAY[384])::vector)"""
    )
    report = check_configuration(MINI, lambda: db_url, True)
    assert report.ok and "keeps text-embedding-3-small@384 current and serving" in report.warnings[0]
