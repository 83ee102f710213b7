"""The `embed-assets` command and the Dagster CLI as a user runs them: subprocesses, the real embedded
server, the repository's dagster.yaml (dagster-postgres storage on the same server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from embed_assets_tests.conftest import REPO

BIN = Path(sys.executable).parent


def cli(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DAGSTER_HOME": str(REPO), **(env or {})}
    proc = subprocess.run(
        [str(BIN / "embed-assets"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_db_url_is_connectable_and_has_pgvector(db_url: str) -> None:
    proc = cli("db-url", check=True)
    url = proc.stdout.strip()
    assert url == db_url
    with psycopg.connect(url) as c:
        assert c.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() == ("vector",)
    dagster_url = cli("db-url", "--dagster", check=True).stdout.strip()
    with psycopg.connect(dagster_url) as c:
        assert c.execute("SELECT current_database()").fetchone() == ("dagster",)


def test_load_keeps_good_files_rejects_bad_ones_and_exits_nonzero(conn: psycopg.Connection, tmp_path: Path) -> None:
    good = {"recording_id": "cli-good", "segments": [{"speaker": "A", "text": "hello there"}]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text('{"recording_id": "cli-bad", "segments": [')
    (tmp_path / "calls.jsonl").write_text(
        json.dumps({**good, "recording_id": "cli-l1"}) + "\n" + json.dumps({"recording_id": "cli-l2"}) + "\n"
    )
    (tmp_path / "cli-vtt.vtt").write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n<v Dana>Hi.</v>\n")
    (tmp_path / "nul.json").write_text(json.dumps({"recording_id": "cli-nul", "segments": [{"text": "a\u0000b"}]}))
    proc = cli("load", str(tmp_path))
    assert proc.returncode == 1
    assert f"rejected: {tmp_path / 'bad.json'}:1: malformed JSON" in proc.stderr
    assert f'rejected: {tmp_path / "calls.jsonl"}:2 (cli-l2): missing "segments"' in proc.stderr
    assert "warning:" in proc.stdout and "stripped 1 control character(s)" in proc.stdout
    assert "loaded 4, unchanged 0, changed 0, rejected 2" in proc.stdout
    ids = {r[0] for r in conn.execute("SELECT recording_id FROM embed_assets.recordings")}
    assert ids == {"cli-good", "cli-l1", "cli-vtt", "cli-nul"}
    assert conn.execute(
        "SELECT text FROM embed_assets.transcript_segments WHERE recording_id = 'cli-nul'"
    ).fetchone() == ("ab",)

    (tmp_path / "bad.json").unlink()
    good["segments"][0]["text"] = "hello again"
    (tmp_path / "good.json").write_text(json.dumps(good))
    proc = cli("load", str(tmp_path))
    assert proc.returncode == 1  # calls.jsonl line 2 is still bad
    assert "loaded 0, unchanged 3, changed 1, rejected 1" in proc.stdout
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(REPO))) as instance:
        assert {"cli-good", "cli-l1", "cli-vtt", "cli-nul"} <= set(instance.get_dynamic_partitions("recordings"))


def test_missing_path_is_one_clear_line() -> None:
    proc = cli("load", "/nonexistent/calls")
    assert proc.returncode != 0 and proc.stderr.strip() == "error: no such file or folder: /nonexistent/calls"


def test_sample_is_deterministic_and_has_a_long_call(conn: psycopg.Connection) -> None:
    cli("sample", "3", "--seed", "11", "--no-register", check=True)
    first = dict(conn.execute("SELECT recording_id, content_hash FROM embed_assets.recordings").fetchall())
    conn.execute("TRUNCATE embed_assets.recordings CASCADE")
    cli("sample", "3", "--seed", "11", "--no-register", check=True)
    assert dict(conn.execute("SELECT recording_id, content_hash FROM embed_assets.recordings").fetchall()) == first
    longest = conn.execute("SELECT max(end_s) FROM embed_assets.transcript_segments").fetchone()[0]
    assert longest >= 3 * 3600 - 60


def test_dagster_job_execute_one_partition_on_the_real_instance(conn: psycopg.Connection, fake_openai) -> None:
    transcript = {"recording_id": "cli-exec", "segments": [{"speaker": "A", "text": "renewal pricing " * 80}]}
    env = {k: os.environ[k] for k in ("EMBED_PROVIDER", "EMBED_MODEL", "EMBED_DIMENSIONS", "OPENAI_BASE_URL")}
    env["OPENAI_API_KEY"] = fake_openai.api_key
    path = REPO / ".embed_assets_test_input.json"
    path.write_text(json.dumps(transcript))
    try:
        cli("load", str(path), env=env, check=True)
    finally:
        path.unlink()
    proc = subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "execute",
            "-m",
            "embed_assets.definitions",
            "-j",
            "embed_recordings",
            "--tags",
            json.dumps({"dagster/partition": "cli-exec"}),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, **env, "DAGSTER_HOME": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = conn.execute(
        "SELECT count(*) FROM embed_assets.transcript_chunks WHERE recording_id = 'cli-exec' AND embedding IS NOT NULL"
    ).fetchone()[0]
    assert n > 0 and fake_openai.seen.inputs == n
    assert fake_openai.api_key not in proc.stdout + proc.stderr

    status = cli("status", "--json", env=env, check=True)
    data = json.loads(status.stdout)
    assert data["embedded_current"] == 1 and data["recordings"] == 1 and data["verdict"] == "healthy"


def test_definitions_validate() -> None:
    proc = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "embed_assets.definitions"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "DAGSTER_HOME": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "command", ["load", "sample", "status", "search", "db-url", "db-stop", "embed", "dev", "index"]
)
def test_every_command_has_help(command: str) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_search_returns_the_design_fields(conn: psycopg.Connection, fake_openai) -> None:
    from embed_assets.lib.chunking import ChunkParams
    from embed_assets.lib.models import resolve_model
    from embed_assets.lib.pipeline import chunk_recording, embed_recording
    from embed_assets.lib.sources.tables import upsert_transcript
    from embed_assets.lib.transcripts import Segment, Transcript
    from embed_assets_tests.test_store import HashEmbedder

    spec = resolve_model("openai", "text-embedding-3-small", 384)
    for rid in ("s1", "s2"):
        segments = tuple(Segment("A", " ".join(f"{rid}w{i}x{j}" for j in range(30))) for i in range(6))
        upsert_transcript(conn, Transcript(rid, segments))  # unique words: no two chunks share a text
        chunk_recording(conn, rid, spec, ChunkParams(40, 5))
        embed_recording(conn, rid, HashEmbedder(), insert_batch_size=50, statement_timeout_ms=30_000)
    target = conn.execute(
        "SELECT content FROM embed_assets.chunks WHERE recording_id = 's2' AND chunk_index = 3"
    ).fetchone()[0]
    env = {k: os.environ[k] for k in ("EMBED_PROVIDER", "EMBED_MODEL", "EMBED_DIMENSIONS", "OPENAI_BASE_URL")}
    env["OPENAI_API_KEY"] = fake_openai.api_key
    proc = cli("search", target, "-k", "3", "--json", "--mode", "vector", env=env, check=True)
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(hits) == 3
    assert list(hits[0]) == [
        "recording_id",
        "chunk_index",
        "score",
        "first_seq",
        "last_seq",
        "start_s",
        "end_s",
        "speakers",
        "content",
    ]
    assert (hits[0]["recording_id"], hits[0]["chunk_index"]) == ("s2", 3) and hits[0]["score"] == pytest.approx(1.0)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    hybrid = cli("search", target, "-k", "3", "--json", env=env, check=True)  # the default mode
    first = json.loads(hybrid.stdout.splitlines()[0])
    assert (first["recording_id"], first["chunk_index"]) == ("s2", 3)  # first by meaning and by words
    only = cli("search", target, "-k", "5", "--recording", "s1", "--json", env=env, check=True)
    assert {json.loads(line)["recording_id"] for line in only.stdout.splitlines()} == {"s1"}
