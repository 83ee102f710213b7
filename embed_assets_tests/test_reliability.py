"""Faults real deployments see, injected deterministically: kill -9 mid-write, the database restarted
mid-write, a recording deleted mid-run, and hostile input end to end. Each asserts the exact final state.

The "mid-write" moment is made deterministic without any hook in product code: the test holds an
ACCESS EXCLUSIVE lock on `embedded_recordings`, the last table the vector write transaction touches, so
the run blocks with all its vectors written but not committed; the test sees it waiting in
pg_stat_activity and then strikes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from embed_assets.lib.db.connection import stop_embedded_server, vector_database_url
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.conftest import REPO
from embed_assets_tests.support.openai_server import FakeOpenAI

FAST_RETRY = {"ops": {"chunk_embeddings": {"config": {"step_retry_delay_s": 0.2, "backoff_base_s": 0.01}}}}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll for a condition (coordination only: nothing is asserted about how long it took)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_run(key: str, config: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embed_assets_tests.support.run_partition", key, json.dumps(config or FAST_RETRY)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ),
    )


def outcome(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert out.strip(), err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def write_blocked(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
        return bool(
            c.execute(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO %%embedded_recordings%%'"""
            ).fetchone()[0]
        )


def state(url: str, rid: str) -> tuple[int, int, int, int]:
    """(chunks, vectors, vectors matching their chunk's text, duplicate vector keys) of one recording."""
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(
            """SELECT (SELECT count(*) FROM embed_assets.chunks WHERE recording_id = %(r)s),
                      (SELECT count(*) FROM embed_assets.chunk_vectors WHERE recording_id = %(r)s),
                      (SELECT count(*) FROM embed_assets.transcript_chunks
                       WHERE recording_id = %(r)s AND embedding IS NOT NULL),
                      (SELECT count(*) FROM (SELECT chunk_index FROM embed_assets.chunk_vectors
                                              WHERE recording_id = %(r)s
                                             GROUP BY chunk_index HAVING count(*) > 1) d)""",
            {"r": rid},
        ).fetchone()


def big(rid: str, n: int = 150) -> Transcript:
    return Transcript(rid, tuple(Segment(f"S{i % 3}", f"turn {i} about the renewal " * 6) for i in range(n)))


def locked(url: str) -> psycopg.Connection:
    holder = psycopg.connect(url)
    holder.execute("LOCK TABLE embed_assets.embedded_recordings IN ACCESS EXCLUSIVE MODE")
    return holder


def test_kill_9_mid_write_then_rerun_leaves_one_exact_copy(conn, db_url, fake_openai: FakeOpenAI) -> None:
    upsert_transcript(conn, big("kill-me"))
    holder = locked(db_url)
    proc = start_run("kill-me")
    try:
        wait_for(lambda: write_blocked(db_url), "the vector write to block on the lock")
        assert state(db_url, "kill-me")[1] == 0  # written but not committed: invisible
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        holder.close()
    wait_for(lambda: not write_blocked(db_url), "the killed backend to go")
    chunks = state(db_url, "kill-me")[0]
    assert chunks > 10 and state(db_url, "kill-me") == (chunks, 0, 0, 0)  # rolled back, nothing half-written

    paid = fake_openai.seen.inputs
    assert outcome(start_run("kill-me"))["success"]
    assert state(db_url, "kill-me") == (chunks, chunks, chunks, 0)
    assert fake_openai.seen.inputs == paid  # the killed write's vectors were kept before it (vector_cache)
    print(f"kill -9: {chunks} chunks, requests {fake_openai.seen.requests}, inputs {fake_openai.seen.inputs}")


def test_database_restart_mid_write_is_retried_to_an_exact_state(
    conn, db_url, embed_home: Path, fake_openai: FakeOpenAI
) -> None:
    upsert_transcript(conn, big("restart-me"))
    holder = locked(db_url)
    patient = {"ops": {"chunk_embeddings": {"config": {"step_retry_delay_s": 1.0, "step_retries": 4}}}}
    proc = start_run("restart-me", patient)  # retries at 1, 2, 4, 8 s: the restart fits in the first
    wait_for(lambda: write_blocked(db_url), "the vector write to block on the lock")
    assert stop_embedded_server(embed_home)  # every connection dies, the open transaction with it
    holder.close()
    assert vector_database_url() == db_url  # started again, same place
    result = outcome(proc)
    assert result["success"] and result["restarts"] >= 1, "\n".join(result["failures"])
    n = state(db_url, "restart-me")[0]
    assert n > 10 and state(db_url, "restart-me") == (n, n, n, 0)
    print(f"db restart: {n} chunks, requests {fake_openai.seen.requests}, inputs {fake_openai.seen.inputs}")


def test_recording_deleted_while_its_run_is_in_flight(conn, db_url, fake_openai: FakeOpenAI) -> None:
    upsert_transcript(conn, big("delete-me", 40))
    fake_openai.gate.clear()  # the provider holds the first request
    proc = start_run("delete-me")
    wait_for(lambda: fake_openai.seen.requests >= 1, "the run to reach the provider")
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'delete-me'")
    fake_openai.gate.set()
    result = outcome(proc)
    # Gone from the source: removed, not a failure (issue 34), and no pointless retries.
    assert result["success"] and result["restarts"] == 0 and not result["failures"], result
    assert state(db_url, "delete-me") == (0, 0, 0, 0)


def test_hostile_input_end_to_end(conn, db_url, fake_openai: FakeOpenAI) -> None:
    rid = 'rec\'; DROP TABLE embed_assets.chunk_vectors; -- "q" ✓ עברית'
    long_turn = "ok, " * 50_000  # 100,000 cl100k tokens in one turn
    t = Transcript(
        rid,
        (
            Segment("Ωmega 👋", "مرحبا بكم 'quoted' \"double\" ; DROP TABLE x; -- 🚀 emoji and RTL text"),
            Segment("O'Brien", long_turn),
            Segment("Dana", "Thanks, bye."),
        ),
    )
    upsert_transcript(conn, t)
    result = outcome(start_run(rid))
    assert result["success"], result
    n, vectors, matching, dups = state(db_url, rid)
    assert n > 400 and (vectors, matching, dups) == (n, n, 0)
    with psycopg.connect(db_url, autocommit=True) as c:
        speakers = c.execute(
            "SELECT DISTINCT unnest(speakers) FROM embed_assets.chunks WHERE recording_id = %s ORDER BY 1", (rid,)
        ).fetchall()
        assert [s[0] for s in speakers] == sorted(["Dana", "O'Brien", "Ωmega 👋"])
        assert (
            c.execute("SELECT max(token_count) FROM embed_assets.chunks WHERE recording_id = %s", (rid,)).fetchone()[0]
            <= 200
        )
        assert (
            c.execute("SELECT to_regclass('embed_assets.chunk_vectors')").fetchone()[0] == "embed_assets.chunk_vectors"
        )


@pytest.mark.parametrize("n", [2])
def test_two_runs_of_one_partition_at_once(conn, db_url, fake_openai: FakeOpenAI, n: int) -> None:
    upsert_transcript(conn, big("twice"))
    procs = [start_run("twice") for _ in range(n)]
    results = [outcome(p) for p in procs]
    assert all(r["success"] for r in results), results  # no duplicate-key errors
    chunks = state(db_url, "twice")[0]
    assert state(db_url, "twice") == (chunks, chunks, chunks, 0)
