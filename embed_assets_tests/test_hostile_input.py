"""Hostile and careless input to `embed-assets load` and `sample` (issue 38), as a user runs them: a subprocess, the
real embedded server, the repository's Dagster instance. Each bad record gets one clear line naming it and the fix,
the command exits non-zero, the good records beside it load, and nothing of the bad one is left in a table or in
Dagster's partitions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import unicodedata
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance

from embed_assets_tests.conftest import REPO
from embed_assets_tests.test_cli import BIN, cli

GOOD_SEGMENTS = [{"speaker": "Dana", "text": "Thanks for joining the renewal call."}]


def _record(rid: str, **extra: object) -> dict:
    return {"recording_id": rid, "segments": GOOD_SEGMENTS, **extra}


def _partitions() -> set[str]:
    os.environ["DAGSTER_HOME"] = str(REPO)
    with DagsterInstance.get() as instance:
        return set(instance.get_dynamic_partitions("recordings"))


def _stored(conn: psycopg.Connection, prefix: str) -> set[str]:
    rows = conn.execute("SELECT recording_id FROM embed_assets.recordings WHERE recording_id LIKE %s", (prefix + "%",))
    return {r[0] for r in rows}


# (case id, file name, file text, the bad record's id, what its one line must say)
CASES = [
    ("year-1-with-offset", "d1.json", _record("hx-d1", started_at="0001-01-01T00:00:00+05:00"), "hx-d1", "outside"),
    ("year-9999-negative", "d2.json", _record("hx-d2", started_at="9999-12-31T23:00:00-05:00"), "hx-d2", "outside"),
    (
        "400-word-speaker",
        "s1.json",
        {"recording_id": "hx-s1", "segments": [{"speaker": "name " * 400, "text": "hello there"}]},
        "hx-s1",
        "speaker name is 2,000 characters; the limit is 100",
    ),
    (
        "400-digit-number",
        "n1.json",
        {"recording_id": "hx-n1", "segments": [{"speaker": "A", "text": "hi", "start_s": 10**400}]},
        "hx-n1",
        "start_s must be a non-negative number of seconds",
    ),
    ("zero-width-space", "z1.json", _record("hx-z1\u200b"), "hx-z1\u200b", "U+200B ZERO WIDTH SPACE at position 6"),
    ("bidi-override", "b1.json", _record("hx-\u202eb1"), "hx-\u202eb1", "U+202E RIGHT-TO-LEFT OVERRIDE at position 4"),
]


@pytest.mark.parametrize(("name", "fname", "record", "bad_id", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_record_gets_one_line_and_the_good_ones_load(
    conn: psycopg.Connection, tmp_path: Path, name: str, fname: str, record: dict, bad_id: str, expected: str
) -> None:
    (tmp_path / "a-good.json").write_text(json.dumps(_record("hx-good-a")))
    (tmp_path / fname).write_text(json.dumps(record))
    (tmp_path / "z-good.json").write_text(json.dumps(_record("hx-good-z")))
    proc = cli("load", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rejected:")]
    assert len(lines) == 1 and str(tmp_path / fname) in lines[0] and expected in lines[0], proc.stderr
    assert "loaded 2" in proc.stdout
    assert _stored(conn, "hx-") == {"hx-good-a", "hx-good-z"}
    assert bad_id not in _partitions()


def test_deep_nesting_and_a_fifo_cost_only_their_own_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "a-good.json").write_text(json.dumps(_record("hx-deep-a")))
    (tmp_path / "b-deep.json").write_text("[" * 200_000 + "]" * 200_000)
    os.mkfifo(tmp_path / "c-pipe.json")  # nobody writes to it: reading it would wait forever
    (tmp_path / "d-good.json").write_text(json.dumps(_record("hx-deep-d")))
    proc = cli("load", str(tmp_path), str(tmp_path / "c-pipe.json"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"rejected: {tmp_path / 'b-deep.json'}: JSON nested too deeply" in proc.stderr
    assert f"rejected: {tmp_path / 'c-pipe.json'}: not a regular file" in proc.stderr
    assert _stored(conn, "hx-deep-") == {"hx-deep-a", "hx-deep-d"}


def test_a_huge_or_foreign_file_is_refused_before_it_is_read(conn: psycopg.Connection, tmp_path: Path) -> None:
    big = tmp_path / "huge.json"
    with big.open("wb") as f:  # sparse: 300 MB on paper, nothing on disk; reading it would take 300 MB of memory
        f.truncate(300 * 1024 * 1024)
    binary = tmp_path / "movie.bin"
    with binary.open("wb") as f:
        f.truncate(2 * 1024 * 1024 * 1024)
    proc = cli("load", str(big), str(binary))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"rejected: {big}: 314,572,800 bytes; the limit is" in proc.stderr
    assert f"rejected: {binary}: unknown format .bin" in proc.stderr


def test_jsonl_strings_holding_unicode_line_separators_stay_one_record(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    lines = [
        _record("hx-ls-1", title="first\u2028line"),
        _record("hx-ls-2", title="next\u0085line"),
        _record("hx-ls-3", title="form\x1cfeed"),
    ]
    (tmp_path / "calls.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n")
    proc = cli("load", str(tmp_path / "calls.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "loaded 3" in proc.stdout and "rejected 0" in proc.stdout
    assert _stored(conn, "hx-ls-") == {"hx-ls-1", "hx-ls-2", "hx-ls-3"}


def test_the_nfc_and_nfd_spellings_of_an_id_are_one_recording(conn: psycopg.Connection, tmp_path: Path) -> None:
    nfc = "hx-café"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    (tmp_path / "a.json").write_text(json.dumps(_record(nfd)))
    assert cli("load", str(tmp_path / "a.json")).returncode == 0
    (tmp_path / "b.json").write_text(json.dumps(_record(nfc)))
    proc = cli("load", str(tmp_path / "b.json"))
    assert proc.returncode == 0 and "unchanged 1" in proc.stdout, proc.stdout
    assert _stored(conn, "hx-caf") == {nfc}
    assert nfd not in _partitions()


def test_a_path_that_looks_like_markup_is_printed_as_it_is(conn: psycopg.Connection, tmp_path: Path) -> None:
    folder = tmp_path / "calls[" / "[bold]x"
    folder.mkdir(parents=True)
    (folder / "bad.json").write_text("{")
    proc = cli("load", str(folder / "bad.json"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"rejected: {folder / 'bad.json'}:1: malformed JSON" in proc.stderr


def test_sample_refuses_a_count_it_cannot_hold() -> None:
    proc = cli("sample", "99999999999999999999")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "less than or equal to 100000" in " ".join(proc.stderr.replace("│", " ").split())


def test_an_interrupted_load_leaves_every_stored_recording_registered(conn: psycopg.Connection) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(REPO)}
    proc = subprocess.Popen(
        [str(BIN / "embed-assets"), "sample", "3000", "--seed", "91", "--no-long-call"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(_stored(conn, "rec-091-")) < 250 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the load finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    stored = _stored(conn, "rec-091-")
    assert 250 <= len(stored) < 3000
    assert stored <= _partitions()


CONFIG_CASES = [
    ({"EMBED_DIMENSIONS": "abc"}, "EMBED_DIMENSIONS='abc' is not a whole number"),
    ({"EMBED_HOME": "/etc/hostname"}, "EMBED_HOME=/etc/hostname is a file, not a folder"),
    ({"EMBED_SCHEMA": "pg_temp"}, "names starting with pg_ are PostgreSQL's own"),
    ({"EMBED_DATABASE_URL": "postgres://u:hunter2pw@[::1:5432/db"}, "EMBED_DATABASE_URL is not a PostgreSQL URL"),
    ({"EMBED_DATABASE_URL": "host=localhost password=hunter2pw"}, "EMBED_DATABASE_URL is not a PostgreSQL URL"),
    ({"EMBED_DATABASE_URL": "mysql://u:hunter2pw@h/db"}, "EMBED_DATABASE_URL is not a PostgreSQL URL"),
]


@pytest.mark.parametrize(
    ("env", "expected"), CONFIG_CASES, ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _ in CONFIG_CASES]
)
@pytest.mark.parametrize("command", ["check", "status"])
def test_bad_configuration_is_one_line_naming_the_setting(command: str, env: dict[str, str], expected: str) -> None:
    proc = cli(command, env=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr
    assert expected in proc.stdout + proc.stderr
    assert "hunter2pw" not in proc.stdout + proc.stderr


def test_a_server_that_never_answers_fails_check_within_the_connect_timeout(tmp_path: Path) -> None:
    import socket

    from embed_assets.lib.db.connection import CONNECT_TIMEOUT_S

    with socket.socket() as listener:  # accepts connections into its backlog and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        env = {"EMBED_DATABASE_URL": f"postgresql://u:p@127.0.0.1:{port}/db"}
        started = time.monotonic()
        proc = cli("check", env=env)
        took = time.monotonic() - started
    assert proc.returncode == 1 and "connection timeout expired" in proc.stdout + proc.stderr
    print(f"check against a silent listener: {took:.1f} s (connect timeout {CONNECT_TIMEOUT_S} s per attempt)")


HOSTILE_SPEAKERS = {
    "hx-markup": [
        ("[/]", "The renewal price is fixed for ZEBRA42QX customers."),
        ("[link=https://evil.example/phish]Support Desk[/link]", "Please confirm ZEBRA42QX at our portal."),
        ("Ana\u202eevil", "Right-to-left override inside ZEBRA42QX text \u202e here."),
    ]
}


def test_transcript_text_is_printed_as_text_never_as_markup(conn: psycopg.Connection) -> None:
    from embed_assets.lib.chunking import ChunkParams
    from embed_assets.lib.embedders import LocalEmbedderConfig
    from embed_assets.lib.pipeline import chunk_recording, embed_recording
    from embed_assets.lib.sources.tables import upsert_transcript
    from embed_assets.lib.transcripts import Segment, Transcript
    from embed_assets_tests.support.models import reset_models

    model = LocalEmbedderConfig().build()
    try:
        reset_models(conn, model.spec)
        for rid, turns in HOSTILE_SPEAKERS.items():
            upsert_transcript(conn, Transcript(rid, tuple(Segment(s, t) for s, t in turns), title=rid))
            chunk_recording(conn, rid, model.spec, ChunkParams(24, 0))
            embed_recording(conn, rid, model, insert_batch_size=50, statement_timeout_ms=30_000)
    finally:
        model.close()
    proc = cli("search", "ZEBRA42QX", "--mode", "text", "-k", "5")
    assert proc.returncode == 0, proc.stderr
    assert "MarkupError" not in proc.stderr and "Traceback" not in proc.stderr
    assert "[/]" in proc.stdout  # printed, not parsed as a closing tag
    assert "[link=https://evil.example/phish]Support Desk[/link]" in proc.stdout  # shown, not made a hyperlink
    assert "\x1b]8;" not in proc.stdout  # no OSC 8 hyperlink escape
    assert "\u202e" not in proc.stdout and "\\u202e" in proc.stdout  # the override is shown, not obeyed


BAD_BATCHES = [
    ("nul", json.dumps({"query": "price\u0000list"}).encode(), "NUL character at position 6"),
    ("lone-surrogate", b'{"query": "price \\ud800 list"}\n', "not valid UTF-8"),
    ("not-utf8", b'{"query": "pr\xe9\xe9 list"}\n', "not valid UTF-8 (byte 42)"),
    ("one-megabyte", json.dumps({"query": "price " * 200_000}).encode(), "the limit is 4,000"),
    ("empty", b'{"query": "   "}\n', '{"query": "..."} (a non-empty string)'),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in BAD_BATCHES], ids=[c[0] for c in BAD_BATCHES])
@pytest.mark.parametrize("mode", ["hybrid", "text"])
def test_a_bad_batch_query_is_named_before_any_runs(tmp_path: Path, mode: str, data: bytes, expected: str) -> None:
    batch = tmp_path / "q.jsonl"
    batch.write_bytes(b'{"query": "a fine question"}\n' + data)
    proc = cli("search", "--batch", str(batch), "--mode", mode)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("mode", ["hybrid", "text", "vector"])
def test_an_empty_or_undecodable_query_argument_is_refused(mode: str) -> None:
    empty = cli("search", "  ", "--mode", mode)
    assert empty.returncode == 1 and "the query is empty" in empty.stderr and empty.stdout == ""
    proc = subprocess.run(  # argv bytes that are not UTF-8 arrive as lone surrogates
        [str(BIN / "embed-assets"), "search", b"pr\xe9\xe9", "--mode", mode],
        capture_output=True,
        env={**os.environ, "DAGSTER_HOME": str(REPO)},
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1 and b"not valid UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


def test_a_mistyped_schema_is_named_and_never_created(conn: psycopg.Connection) -> None:
    for command in ("status", "check", "search"):
        args = (command, "pricing") if command == "search" else (command,)
        proc = cli(*args, env={"EMBED_SCHEMA": "embed_asets"})
        assert proc.returncode != 0, (command, proc.stdout)
        assert "schema 'embed_asets' does not exist" in proc.stdout + proc.stderr, (command, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'embed_asets'").fetchone()[0] == 0


def test_check_runs_the_source_sql_read_only(conn: psycopg.Connection, tmp_path: Path) -> None:
    source = tmp_path / "source.yaml"
    source.write_text(
        "name: sneaky\n"
        "recordings: SELECT 'hx-lo'::text AS recording_id, lo_create(0)::text AS title\n"
        "turns: SELECT 'hx-lo'::text AS recording_id, 0 AS seq, 'A' AS speaker, 'hi' AS text\n"
    )
    before = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
    proc = cli("check", env={"EMBED_SOURCE": str(source)})
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1 and "read-only transaction" in proc.stdout + proc.stderr
    assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == before
