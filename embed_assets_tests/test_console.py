"""`embed-assets embed` as a user runs it: a subprocess on the real embedded server, an OpenAI-compatible
loopback server, and a DAGSTER_HOME that starts empty (the command writes the project's dagster.yaml into it)
on a Dagster database of the test's own. The summary's figures are checked against the database."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from embed_assets.console import pending_blocks
from embed_assets_tests.conftest import REPO
from embed_assets_tests.support.openai_server import Fault

BIN = Path(sys.executable).parent
MODEL = "text-embedding-3-small@384"  # what the fake_openai fixture configures
USD_PER_MILLION = 0.02


# The SQL of this file, in one place. The project's tables live in schema embed_assets (EMBED_SCHEMA's default).
def db_figures(conn: psycopg.Connection, model: str = MODEL) -> dict[str, int]:
    """The summary's figures as the database has them, for a store that was empty before the session."""

    def one(query: str) -> int:
        return conn.execute(query, {"m": model}).fetchone()[0]

    return {
        "recordings embedded": one("SELECT count(*) FROM embed_assets.embedded_recordings WHERE model = %(m)s"),
        "chunks": one("SELECT count(*) FROM embed_assets.chunks WHERE model = %(m)s"),
        "vectors written": one("SELECT count(*) FROM embed_assets.chunk_vectors WHERE model = %(m)s"),
        # Each distinct text is sent once (a repeated text reuses the stored vector): what the provider saw.
        "chunks sent to the provider": one(
            "SELECT count(DISTINCT content_hash) FROM embed_assets.chunks WHERE model = %(m)s"
        ),
        "tokens sent": one(
            """SELECT coalesce(sum(token_count), 0)
               FROM (SELECT DISTINCT content_hash, token_count FROM embed_assets.chunks WHERE model = %(m)s) t"""
        ),
        "recording errors": one("SELECT count(*) FROM embed_assets.recording_errors WHERE model = %(m)s"),
    }


def recording_ids(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT recording_id FROM embed_assets.recordings ORDER BY recording_id")]


def delete_recording(conn: psycopg.Connection, recording_id: str) -> None:
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = %s", (recording_id,))


def recorded_error(conn: psycopg.Connection, recording_id: str) -> str:
    return conn.execute(
        "SELECT error FROM embed_assets.recording_errors WHERE recording_id = %s", (recording_id,)
    ).fetchone()[0]


def cli(*args: str, home: Path, dagster_db: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBED_DAGSTER_DATABASE_URL": dagster_db}
    return subprocess.run(
        [str(BIN / "embed-assets"), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


def summary_figures(stdout: str) -> dict[str, str]:
    """The summary table's rows (two spaces, label, two or more spaces, value)."""
    rows = re.findall(r"^  ([a-z][a-z ]*?)  +(\S.*?)\s*$", stdout, re.MULTILINE)
    return dict(rows)


def number(value: str) -> int:
    return int(value.replace(",", ""))


def assert_plain(proc: subprocess.CompletedProcess) -> None:
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert "\x1b" not in text and "\r" not in text, f"control characters in {name}: {text[-2000:]!r}"


@pytest.mark.parametrize(
    ("ordered", "pending", "size", "blocks"),
    [
        (["a", "b", "c", "d", "e"], {"a", "b", "c", "d", "e"}, 2, [["a", "b"], ["c", "d"], ["e"]]),
        (["a", "b", "c", "d", "e"], {"a", "b", "d", "e"}, 25, [["a", "b"], ["d", "e"]]),  # a range is contiguous
        (["a", "b", "c"], set(), 25, []),
    ],
)
def test_pending_blocks_are_contiguous_partition_ranges(
    ordered: list[str], pending: set[str], size: int, blocks: list[list[str]]
) -> None:
    assert pending_blocks(ordered, pending, size) == blocks


def test_summary_equals_the_database(conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"  # does not exist yet: the first command creates it and its dagster.yaml
    loaded = cli("sample", "4", "--no-long-call", home=home, dagster_db=dagster_db)
    assert loaded.returncode == 0, loaded.stderr
    assert f"wrote {home / 'dagster.yaml'}" in loaded.stderr
    fake_openai.fail_requests({1}, Fault(500, headers={"Retry-After": "0"}))  # one provider retry

    proc = cli("embed", "--per-run", "3", home=home, dagster_db=dagster_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_plain(proc)
    assert "STEP_START" not in proc.stdout + proc.stderr  # Dagster's event lines stay in the event log
    assert len(re.findall(r"^run [12]/2: .* \| \d+/4 recordings, [\d,]+ chunks", proc.stdout, re.MULTILINE)) == 2
    shown, db = summary_figures(proc.stdout), db_figures(conn)
    assert number(shown["recordings embedded"]) == db["recordings embedded"] == 4
    assert number(shown["recordings unchanged"]) == 0 and number(shown["recordings failed"]) == 0
    for figure in ("chunks", "vectors written", "chunks sent to the provider", "tokens sent"):
        assert number(shown[figure]) == db[figure], figure
    assert db["vectors written"] == db["chunks"] > 4
    assert number(shown["tokens sent"]) == fake_openai.seen.tokens
    assert number(shown["provider requests"]) == fake_openai.seen.requests
    assert number(shown["provider retries"]) == 1
    cost = float(shown["estimated cost"].lstrip("$"))
    assert cost == pytest.approx(db["tokens sent"] * USD_PER_MILLION / 1_000_000, abs=5e-7) and cost > 0
    assert shown["runs"] == "2 (0 failed)"

    # The same recordings again: all unchanged, nothing written, nothing sent; -v brings Dagster's lines back.
    requests = fake_openai.seen.requests
    again = cli("embed", "--all", "-v", home=home, dagster_db=dagster_db)
    assert again.returncode == 0, again.stderr
    shown = summary_figures(again.stdout)
    assert number(shown["recordings unchanged"]) == 4 and number(shown["recordings embedded"]) == 0
    assert number(shown["vectors written"]) == 0 and number(shown["chunks"]) == db_figures(conn)["chunks"]
    assert number(shown["provider requests"]) == 0 == fake_openai.seen.requests - requests
    assert "STEP_START" in again.stderr


def test_a_recording_deleted_before_embed_is_removed_and_its_run_neighbour_is_embedded(
    conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 34: `embed` applies the sensor's removals before it selects work, so a deleted recording is reported
    as removed, not failed, and the recording that would have shared its run is embedded (exit 0). A recording
    that fails is listed with its error and exit 1 in the next test."""
    home = tmp_path / "dagster_home"
    assert cli("sample", "3", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    gone = tmp_path / "rec-gone.json"
    gone.write_text(json.dumps({"recording_id": "rec-gone", "segments": [{"speaker": "A", "text": "hello"}]}))
    assert cli("load", str(gone), home=home, dagster_db=dagster_db).returncode == 0
    delete_recording(conn, "rec-gone")  # its partition stays registered until embed (or the sensor) removes it

    proc = cli("embed", "--per-run", "2", home=home, dagster_db=dagster_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_plain(proc)
    shown, db = summary_figures(proc.stdout), db_figures(conn)
    assert number(shown["recordings embedded"]) == db["recordings embedded"] == 3
    assert number(shown["recordings failed"]) == 0 and number(shown["recordings removed"]) == 1
    assert number(shown["vectors written"]) == db["vectors written"]
    assert "removed 1 recording(s) no longer in the source tables" in proc.stdout and "rec-gone" in proc.stdout
    assert not re.search(r"^failed ", proc.stdout, re.MULTILINE)
    assert shown["runs"] == "2 (0 failed)"
    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    with dg.DagsterInstance.from_config(str(home)) as instance:  # its partition went, as the sensor's would
        assert "rec-gone" not in instance.get_dynamic_partitions("recordings")


def test_a_run_that_fails_without_naming_a_recording_stops_the_session(
    conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path
) -> None:
    """A provider error fails the step at once (DESIGN: no retry storm); every later run would hit it too."""
    home = tmp_path / "dagster_home"
    assert cli("sample", "3", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    fake_openai.fail_requests({2}, Fault(400, body={"error": {"message": "input rejected", "type": "invalid"}}))
    ids = recording_ids(conn)

    proc = cli("embed", "--per-run", "1", home=home, dagster_db=dagster_db)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    shown, db = summary_figures(proc.stdout), db_figures(conn)
    assert number(shown["recordings embedded"]) == db["recordings embedded"] == 1
    assert number(shown["recordings failed"]) == 1 == db["recording errors"]
    assert number(shown["recordings not attempted"]) == 1
    stored = recorded_error(conn, ids[1])
    failed = dict(re.findall(r"^failed (\S+): (.*) \[run \w+\]$", proc.stdout, re.MULTILINE))
    assert failed == {ids[1]: stored.strip().splitlines()[0]}
    assert "rejected the request" in stored
    assert re.search(r"^stopped after run 2: ", proc.stdout, re.MULTILINE)
    assert fake_openai.seen.requests == 2  # the third recording never reached the provider


def test_on_a_terminal_the_bar_goes_to_the_terminal_and_not_into_the_compute_logs(
    conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path, embed_home: Path
) -> None:
    """While a step runs, Dagster points fds 1 and 2 at the run's compute log files; the live display writes to
    its own copy of the terminal's stderr, so the logs (shown in the UI) stay free of it."""
    home = tmp_path / "dagster_home"
    assert cli("sample", "2", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    terminal, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    started = time.time()
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBED_DAGSTER_DATABASE_URL": dagster_db, "TERM": "xterm"}
    with (tmp_path / "stdout").open("w") as stdout:
        proc = subprocess.Popen(
            [str(BIN / "embed-assets"), "embed"], stdout=stdout, stderr=tty, env=env, cwd=REPO, stdin=subprocess.DEVNULL
        )
        os.close(tty)
        shown = b""
        while True:  # until the child's end of the terminal closes (EIO)
            try:
                chunk = os.read(terminal, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        os.close(terminal)
        assert proc.wait(timeout=600) == 0
    screen = shown.decode("utf-8", "replace")
    assert "recordings" in screen and "━" in screen and "\x1b[" in screen  # the live bar, in colour
    assert "run 1/1 chunking" in screen and "run 1/1 embedding" in screen  # drawn while the steps ran
    assert re.search(r"run 1/1: \S+ \.\. \S+ \(2\): 2 embedded", screen)
    out = (tmp_path / "stdout").read_text()
    assert number(summary_figures(out)["recordings embedded"]) == 2 and "\x1b" not in out  # stdout is a file
    logs = [p for p in (embed_home / "dagster" / "compute_logs").rglob("*.err") if p.stat().st_mtime >= started]
    assert logs, "no compute logs written by the run"
    for log in logs:
        text = log.read_text(errors="replace")
        assert "━" not in text and "\x1b" not in text, f"{log}: {text[-500:]!r}"


def test_ctrl_c_stops_the_session_and_still_prints_the_summary(
    conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path
) -> None:
    """Dagster turns Ctrl-C inside an in-process run into a failed run and returns; the session must stop
    there rather than start the next run."""
    home = tmp_path / "dagster_home"
    assert cli("sample", "2", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    fake_openai.gate.clear()  # the first provider request waits: the run is inside chunk_embeddings
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBED_DAGSTER_DATABASE_URL": dagster_db}
    proc = subprocess.Popen(
        [str(BIN / "embed-assets"), "embed", "--per-run", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 180
        while fake_openai.seen.requests == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "no provider request"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        fake_openai.gate.set()
        out, err = proc.communicate(timeout=180)
    finally:
        fake_openai.gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted in run 1; 1 recording(s) not attempted" in out
    assert number(summary_figures(out)["recordings not attempted"]) == 1
    assert number(summary_figures(out)["runs"].split()[0]) == 1
