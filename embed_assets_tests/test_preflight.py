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


def test_a_wrong_dimension_names_the_fix(conn: psycopg.Connection) -> None:
    env = {"EMBED_PROVIDER": "openai", "EMBED_MODEL": "text-embedding-3-small", "OPENAI_API_KEY": "sk-x"}
    code, report = run(env=env)  # 1536 dims against the 384-dim table
    assert code == 1 and "holds 384-dim vectors but text-embedding-3-small makes 1536-dim" in report["problems"][0]


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
