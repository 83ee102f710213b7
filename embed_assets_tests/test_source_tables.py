"""The user's own tables as the source (EMBED_SOURCE), read in place: a second database holding a Fathom-shaped
schema, read by a role that may only SELECT; the real sensor, real Dagster runs, the loopback OpenAI server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from embed_assets.definitions import defs
from embed_assets.defs.monitoring import pipeline_health
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets.lib.health.status import db_status
from embed_assets_tests.support.dagster_dev import drop_database, fresh_database
from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.support.sensor_requests import covered
from embed_assets_tests.test_sensors import tick

RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}
FAST = {"ops": {"chunk_embeddings": {"config": {"backoff_base_s": 0.01, "step_retry_delay_s": 0.1}}}}
READER = "fathom_reader"
MODEL = "text-embedding-3-small@384"
FAILED = dg.AssetPartitionStatus.FAILED


def turns(call: int, n: int = 14, changed: int | None = None) -> list[dict]:
    """Fathom's shape: the speaker is an object, the time a clock string; one empty turn, as real exports have."""
    out = []
    for i in range(n):
        text = f"call {call} turn {i}: we went through the renewal terms and the rollout plan for team {i}. " * 3
        if i == changed:
            text = f"call {call} turn {i}: the customer now asks for a completely different discount. " * 3
        out.append({"speaker": {"display_name": f"Speaker {i % 2}"}, "text": "" if i == 5 else text,
                    "timestamp": f"00:{i // 60:02d}:{i % 60:02d}"})  # fmt: skip
    return out


@pytest.fixture
def app_db(db_url: str) -> Iterator[tuple[str, str]]:
    """(superuser URL, read-only URL) of a database of the 'application' with fathom_calls/fathom_transcripts."""
    name = f"fathom_app_{os.getpid()}"
    admin = fresh_database(db_url, name)
    with psycopg.connect(admin, autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,)).fetchone() is None:
            c.execute(f"CREATE ROLE {READER} LOGIN PASSWORD 'reader-pw'")
        c.execute(f"ALTER ROLE {READER} SET default_transaction_read_only = on")
        c.execute("""CREATE TABLE fathom_calls (id bigint PRIMARY KEY, title text, started_at timestamptz,
                                                updated_at timestamptz NOT NULL DEFAULT clock_timestamp())""")
        c.execute("CREATE INDEX ON fathom_calls (updated_at, id)")
        c.execute("""CREATE TABLE fathom_transcripts (
                         call_id bigint PRIMARY KEY REFERENCES fathom_calls ON DELETE CASCADE,
                         transcript text, plain text)""")  # fmt: skip
        c.execute(f"GRANT SELECT ON fathom_calls, fathom_transcripts TO {READER}")
    head, _, query = admin.partition("?")
    user_at = head.split("//", 1)[1].split("@", 1)
    host_part = user_at[1] if len(user_at) == 2 else user_at[0]
    reader = f"postgresql://{READER}:reader-pw@{host_part}" + (f"?{query}" if query else "")
    yield admin, reader
    drop_database(db_url, name)


def add_call(admin: str, call: int, transcript: str | None, plain: str | None = None) -> None:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(
            "INSERT INTO fathom_calls (id, title, started_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (id) DO UPDATE SET updated_at = clock_timestamp()",
            (call, f"Call {call}"),
        )
        c.execute(
            "INSERT INTO fathom_transcripts VALUES (%s, %s, %s) ON CONFLICT (call_id) DO UPDATE "
            "SET transcript = EXCLUDED.transcript, plain = EXCLUDED.plain",
            (call, transcript, plain),
        )


def source_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "source.yaml"
    p.write_text(body)
    return p


JSON_SOURCE = """
name: fathom
database_url: ${FATHOM_DATABASE_URL}
recordings: SELECT id AS recording_id, title, started_at, updated_at FROM public.fathom_calls
transcripts:
  query: SELECT call_id AS recording_id, transcript FROM public.fathom_transcripts
  format: json
  fields: {speaker: speaker.display_name, start_s: timestamp}
"""

# No updated_at: changes are found by the content-hash reconcile (every pass here).
TEXT_SOURCE = """
name: plain
database_url: ${FATHOM_DATABASE_URL}
recordings: SELECT id AS recording_id, title FROM public.fathom_calls
transcripts:
  query: SELECT call_id AS recording_id, plain AS transcript FROM public.fathom_transcripts
  format: text
reconcile_seconds: 0.001
"""


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def use_source(app_db: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point EMBED_SOURCE at a source file with ``body``, read as the read-only role; returns the admin URL."""
    admin, reader = app_db

    def use(body: str) -> str:
        monkeypatch.setenv("FATHOM_DATABASE_URL", reader)
        monkeypatch.setenv("EMBED_SOURCE", str(source_file(tmp_path, body)))
        return admin

    return use


@pytest.fixture(autouse=True)
def settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")


def requested(instance: dg.DagsterInstance, result: dg.SensorResult) -> list[str]:
    return sorted(covered(instance, result))


def run(instance: dg.DagsterInstance, keys: list[str]) -> dg.ExecuteInProcessResult:
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    return defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance, run_config=FAST, tags=tags, raise_on_error=False
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    out = []
    for e in result.all_events:
        if e.is_step_failure:
            data = e.step_failure_data
            out.append(data.user_failure_data.description if data.user_failure_data else data.error.message)
    return "\n".join(out)


def vectors(conn: psycopg.Connection, rid: str) -> dict[int, str]:
    rows = conn.execute(
        "SELECT chunk_index, content_hash FROM embed_assets.chunk_vectors WHERE recording_id = %s", (rid,)
    )
    return dict(rows.fetchall())


def test_fathom_json_source_read_in_place(conn: psycopg.Connection, instance, use_source, fake_openai) -> None:
    admin = use_source(JSON_SOURCE)
    for call in (1, 2, 3):
        add_call(admin, call, json.dumps(turns(call)))
    add_call(admin, 4, json.dumps(turns(4))[:-40])  # a truncated export: malformed JSON

    first = tick(instance, None)
    assert requested(instance, first) == ["1", "2", "3", "4"]
    assert sorted(instance.get_dynamic_partitions("recordings")) == ["1", "2", "3", "4"]
    assert conn.execute("SELECT count(*) FROM embed_assets.transcript_segments").fetchone()[0] == 0  # read in place

    # One run over all four: the malformed row fails alone, with a message naming the row and the fix.
    result = run(instance, ["1", "2", "3", "4"])
    assert not result.success
    message = failure_message(result)
    assert "1 of 4 recording(s) failed" in message  # chunk_embeddings names it; the others were embedded
    assert "unreadable source row: recording '4' (fathom, transcripts query): malformed JSON" in message
    assert "source.yaml" in message
    for rid in ("1", "2", "3"):
        assert len(vectors(conn, rid)) > 1
    status = db_status(conn, MODEL)
    assert (status.embedded_current, status.unreadable_source_rows) == (3, 1)
    # The UI's health asset shows the source (password masked) and the unreadable row.
    health = dg.materialize([pipeline_health], instance=instance, resources=RESOURCES)
    md = health.asset_materializations_for_node("pipeline_health")[0].metadata
    assert md["unreadable_source_rows"].value == 1
    assert md["source"].value.startswith("fathom (") and ":***@" in md["source"].value
    # The retry schedule leaves it alone: only a change of the row can help, and the sensor sees that.
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC), resources=RESOURCES)
    retried = retry_failed_recordings(ctx)
    assert isinstance(retried, dg.SkipReason)  # and the three written are MATERIALIZED: nothing else to retry
    statuses = instance.get_status_by_partition(
        dg.AssetKey("chunk_embeddings"), ["1", "2", "3", "4"], recordings_partitions
    )
    assert statuses == {**dict.fromkeys(["1", "2", "3"], dg.AssetPartitionStatus.MATERIALIZED), "4": FAILED}
    # The empty turn 5 was skipped: no chunk starts or ends on it, and the citations keep the source's positions.
    bounds = conn.execute(
        "SELECT array_agg(first_seq) || array_agg(last_seq) FROM embed_assets.chunks WHERE recording_id = '1'"
    ).fetchone()[0]
    assert 5 not in bounds and max(bounds) == 13
    n2 = len(vectors(conn, "2"))
    before = vectors(conn, "2")
    seen = fake_openai.seen.inputs

    # A changed transcript: only its changed chunks are sent again.
    add_call(admin, 2, json.dumps(turns(2, changed=13)))
    second = tick(instance, first.cursor)
    assert requested(instance, second) == ["2"]
    assert run(instance, ["2"]).success
    sent = fake_openai.seen.inputs - seen
    after = vectors(conn, "2")
    assert 0 < sent < n2 and sent == sum(1 for i, h in after.items() if before.get(i) != h)

    # The row is fixed: its hash changes and it is embedded; the unreadable count drops.
    add_call(admin, 4, json.dumps(turns(4)))
    third = tick(instance, second.cursor)
    assert requested(instance, third) == ["4"]
    assert run(instance, ["4"]).success
    assert db_status(conn, MODEL).unreadable_source_rows == 0

    # A deleted call loses its partition and its vectors.
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DELETE FROM fathom_calls WHERE id = 1")
    fourth = tick(instance, third.cursor)
    assert requested(instance, fourth) == []
    assert sorted(instance.get_dynamic_partitions("recordings")) == ["2", "3", "4"]
    assert vectors(conn, "1") == {}

    # Nothing was written into the application's database: its tables are as the test left them, no schema of ours.
    with psycopg.connect(admin, autocommit=True) as c:
        assert c.execute("SELECT to_regnamespace('embed_assets')").fetchone()[0] is None
        assert c.execute("SELECT count(*) FROM fathom_calls").fetchone()[0] == 3
    # Unchanged source, another pass: nothing requested, nothing sent.
    seen = fake_openai.seen.requests
    assert requested(instance, tick(instance, fourth.cursor)) == []
    assert fake_openai.seen.requests == seen


def test_plain_text_source_without_updated_at(conn: psycopg.Connection, instance, use_source, fake_openai) -> None:
    admin = use_source(TEXT_SOURCE)

    def plain(call: int, last: str = "Thanks, talk soon.") -> str:
        lines = [
            f"Speaker {i % 2}: call {call} line {i} about pricing, seats and the security review. " * 4
            for i in range(12)
        ]
        return "\n".join([*lines, f"Speaker 0: {last}"])

    for call in (1, 2):
        add_call(admin, call, None, plain(call))
    add_call(admin, 3, None, None)  # a NULL transcript
    first = tick(instance, None)
    assert requested(instance, first) == ["1", "2", "3"]
    result = run(instance, ["1", "2", "3"])
    assert not result.success
    assert "unreadable source row: recording '3' (plain, transcripts query): the transcript is NULL" in failure_message(
        result
    )
    assert len(vectors(conn, "1")) > 1 and len(vectors(conn, "2")) > 1

    # A change with no timestamp anywhere is found by the hash reconcile.
    seen = fake_openai.seen.inputs
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("UPDATE fathom_transcripts SET plain = %s WHERE call_id = 2", (plain(2, "One more thing: budget."),))
        c.execute("DELETE FROM fathom_calls WHERE id = 1")
    second = tick(instance, first.cursor)
    assert requested(instance, second) == ["2"]
    assert sorted(instance.get_dynamic_partitions("recordings")) == ["2", "3"]
    assert run(instance, ["2"]).success
    assert 0 < fake_openai.seen.inputs - seen <= 2
    assert vectors(conn, "1") == {}


def test_turn_rows_in_the_vector_store_database(
    conn: psycopg.Connection, instance, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch
) -> None:
    """Same database as the vector store (no database_url), one row per turn, in the app's own schema."""
    conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.calls (id text PRIMARY KEY, updated_at timestamptz DEFAULT clock_timestamp())")
    conn.execute("CREATE TABLE app.turns (call_id text, pos int, who text, said text, t0 real, t1 real)")
    conn.execute("INSERT INTO app.calls (id) VALUES ('c-1'), ('c-2')")
    for cid in ("c-1", "c-2"):
        for i in range(10):
            conn.execute(
                "INSERT INTO app.turns VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    cid,
                    i * 10,
                    f"S{i % 2}",
                    f"{cid} said {i}: the pilot went well, 40% faster onboarding. " * 3,
                    i,
                    i + 1,
                ),
            )
    monkeypatch.setenv(
        "EMBED_SOURCE",
        str(
            source_file(
                tmp_path,
                """recordings: SELECT id AS recording_id, updated_at FROM app.calls WHERE id LIKE 'c-%'
turns: |
  SELECT call_id AS recording_id, pos AS seq, who AS speaker, t0 AS start_s, t1 AS end_s, said AS text
  FROM app.turns
""",
            )
        ),
    )
    try:
        first = tick(instance, None)
        assert requested(instance, first) == ["c-1", "c-2"]
        assert run(instance, ["c-1", "c-2"]).success
        firsts = conn.execute(
            "SELECT min(first_seq), max(last_seq) FROM embed_assets.chunks WHERE recording_id = 'c-1'"
        ).fetchone()
        assert firsts == (0, 90)  # citations are the source's own positions
        assert requested(instance, tick(instance, first.cursor)) == []
        # A worker without EMBED_SOURCE must not chunk a source recording as an empty transcript.
        monkeypatch.delenv("EMBED_SOURCE")
        conn.execute("DELETE FROM embed_assets.chunk_plans WHERE recording_id = 'c-1'")
        result = run(instance, ["c-1"])
        assert not result.success
        assert "comes from a source file (EMBED_SOURCE), which is not set where this run" in failure_message(result)
        assert conn.execute("SELECT count(*) FROM embed_assets.chunks WHERE recording_id = 'c-1'").fetchone()[0] > 1
    finally:
        conn.execute("DROP SCHEMA app CASCADE")


def test_check_and_status_show_the_source_with_its_password_masked(
    conn: psycopg.Connection, app_db, tmp_path: Path
) -> None:
    from embed_assets_tests.test_cli import cli

    admin, reader = app_db
    add_call(admin, 1, json.dumps(turns(1)))
    env = {"FATHOM_DATABASE_URL": reader, "EMBED_SOURCE": str(source_file(tmp_path, JSON_SOURCE))}
    proc = cli("check", "--json", env=env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, report
    assert report["facts"]["source_rows"] == "1 recordings readable (updated_at cursor)"
    assert "fathom (" in report["facts"]["source"] and ":***@" in report["facts"]["source"]
    status = cli("status", env=env)
    assert "source: fathom (" in status.stdout and "0 unreadable source row(s)" in status.stdout
    # The call is in the source but no sensor tick or `embed` has registered it: a warning (exit 1), not healthy.
    assert status.returncode == 1 and "1 source row(s) not registered yet" in status.stdout
    assert "reader-pw" not in proc.stdout + status.stdout + status.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(JSON_SOURCE.replace("public.fathom_calls", "public.fathom_call"))
    proc = cli("check", "--json", env={**env, "EMBED_SOURCE": str(bad)})
    assert proc.returncode == 1
    problem = json.loads(proc.stdout)["problems"][0]
    assert 'the recordings query fails: relation "public.fathom_call" does not exist; fix it in' in problem
    proc = cli("check", "--json", env={**env, "FATHOM_DATABASE_URL": "postgresql://r:reader-pw@127.0.0.1:1/app"})
    assert proc.returncode == 1 and "database_url in" in json.loads(proc.stdout)["problems"][0]
    assert "reader-pw" not in proc.stdout
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("REVOKE SELECT ON fathom_transcripts FROM fathom_reader")
    proc = cli("check", "--json", env=env)
    problem = json.loads(proc.stdout)["problems"][0]
    assert proc.returncode == 1 and "the transcripts query was refused (permission denied" in problem
    assert "grant SELECT on the tables it reads to the role in database_url of" in problem
    load = cli("sample", "2", env=env)
    assert load.returncode == 1 and "EMBED_SOURCE=" in load.stderr and "unset EMBED_SOURCE" in load.stderr


def test_embed_command_reads_the_source_first(
    conn: psycopg.Connection, app_db, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from embed_assets_tests.test_cli import cli

    admin, reader = app_db
    for call in (7, 8):
        add_call(admin, call, json.dumps(turns(call)))
    env = {"FATHOM_DATABASE_URL": reader, "EMBED_SOURCE": str(source_file(tmp_path, JSON_SOURCE))}
    proc = cli("embed", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "source: 2 recording(s); 2 new, 0 changed" in proc.stdout
    assert len(vectors(conn, "7")) > 1 and len(vectors(conn, "8")) > 1
    again = cli("embed", env=env)
    assert "0 new, 0 changed" in again.stdout and "nothing to embed" in again.stdout
