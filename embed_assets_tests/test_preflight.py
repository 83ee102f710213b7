"""`embed-assets check`, the preflight a deploy pipeline runs: exit 0 only when runs can work, one problem
per line, `--json` for machines; the same function as the blocking `embedding_config_valid` check."""

from __future__ import annotations

import json

import psycopg

from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.test_cli import cli


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    proc = cli("check", "--json", *args, env=env)
    return proc.returncode, json.loads(proc.stdout)


def test_all_good_exits_zero(conn: psycopg.Connection) -> None:
    code, report = run()
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["facts"]["database"] == "reachable" and report["facts"]["table_dimension"] == "384"
    assert ":***@" in report["facts"]["database_url"]
    human = cli("check")
    assert human.returncode == 0 and "ok: runs can work" in human.stdout


def test_a_missing_key_fails_before_any_run(conn: psycopg.Connection) -> None:
    code, report = run(
        env={"EMBED_PROVIDER": "openai", "EMBED_MODEL": "text-embedding-3-small", "EMBED_DIMENSIONS": "384"}
    )
    assert code == 1 and not report["ok"]
    assert len(report["problems"]) == 1 and "OPENAI_API_KEY is not set" in report["problems"][0]


def test_another_model_configured_is_a_warning_naming_the_command(conn: psycopg.Connection) -> None:
    """Once vectors exist the registry rules: a configured model of another dimension is not mixed in, nor is it
    a reason to stop the registered one; the warning names the command that moves to it."""
    conn.execute("INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES ('r', 'h', 1)")
    conn.execute(
        """INSERT INTO embed_assets.chunk_vectors (recording_id, model, chunk_index, content_hash, embedding)
           VALUES ('r', 'text-embedding-3-small@384', 0, 'h', array_fill(0.1, ARRAY[384])::vector)"""
    )
    env = {"EMBED_PROVIDER": "openai", "EMBED_MODEL": "text-embedding-3-small", "OPENAI_API_KEY": "sk-x"}
    code, report = run(env=env)  # 1536 dims, while text-embedding-3-small@384 holds the vectors
    assert code == 0 and report["ok"], report
    assert "`embed-assets model shadow text-embedding-3-small`" in report["warnings"][0]


def test_a_table_whose_dimension_disagrees_with_its_model_names_the_fix(conn: psycopg.Connection) -> None:
    (table,) = conn.execute("SELECT vectors FROM embed_assets.models").fetchone()
    conn.execute(f"ALTER TABLE embed_assets.{table} DROP CONSTRAINT {table}_dimension")
    conn.execute(
        f"ALTER TABLE embed_assets.{table} ADD CONSTRAINT {table}_dimension CHECK (vector_dims(embedding) = 1536)"
    )
    code, report = run(env={"EMBED_PROVIDER": "openai", "EMBED_DIMENSIONS": "384", "OPENAI_API_KEY": "sk-x"})
    assert code == 1 and "makes 384-dim vectors but its table" in report["problems"][0]
    assert "`embed-assets model drop text-embedding-3-small@384`" in report["problems"][0]


def test_an_unreachable_database(conn: psycopg.Connection) -> None:
    code, report = run(env={"EMBED_DATABASE_URL": "postgresql://app:hunter2-pw@127.0.0.1:1/calls"})
    assert code == 1 and "cannot reach the database" in report["problems"][0]
    assert "hunter2-pw" not in json.dumps(report)


def test_probe_against_a_server_answering_401(conn: psycopg.Connection) -> None:
    with FakeOpenAI(default_dim=384) as server:
        env = {
            "EMBED_PROVIDER": "openai",
            "EMBED_MODEL": "text-embedding-3-small",
            "EMBED_DIMENSIONS": "384",
            "OPENAI_BASE_URL": server.base_url,
        }
        code, report = run(env={**env, "OPENAI_API_KEY": "sk-revoked-key-000111"})
        assert code == 0 and report["ok"]  # without --probe the key is only known to be present
        proc = cli("check", "--json", "--probe", env={**env, "OPENAI_API_KEY": "sk-revoked-key-000111"})
        report = json.loads(proc.stdout)
        assert proc.returncode == 1 and "live probe failed" in report["problems"][0] and "401" in report["problems"][0]
        assert "sk-revoked-key-000111" not in proc.stdout + proc.stderr
        code, report = run("--probe", env={**env, "OPENAI_API_KEY": server.api_key})
        assert code == 0 and report["facts"]["probe"] == "one live request accepted"
