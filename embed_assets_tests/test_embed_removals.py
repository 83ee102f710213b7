"""`embed-assets embed` after recordings were deleted from the source tables (issue 34): it applies what the
sensor would before it selects work, so a deleted recording is removed, never a failure, and holds back no
other recording. A subprocess as a user runs it, the real embedded server, the loopback OpenAI server, a
Dagster home and database of the test's own."""

# ruff: noqa: F811 (fixtures imported from the modules that define them are parameters of the tests below)
from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.instance.ref import InstanceRef

from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.sensors import new_recordings_sensor
from embed_assets_tests.test_console import MODEL, cli, delete_recording, number, recording_ids, summary_figures
from embed_assets_tests.test_source_tables import JSON_SOURCE, add_call, app_db, source_file, turns  # noqa: F401

RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}


@pytest.fixture
def home_instance(tmp_path: Path, dagster_db: str, monkeypatch: pytest.MonkeyPatch):
    """The Dagster home the commands use, and a way to open its instance in this process."""
    home = tmp_path / "dagster_home"

    def open_instance() -> dg.DagsterInstance:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))

    return home, open_instance


def rows_of(conn: psycopg.Connection, ids: list[str]) -> dict[str, int]:
    return {
        table: conn.execute(
            f"SELECT count(*) FROM embed_assets.{table} WHERE recording_id = ANY(%s)",  # noqa: S608 (our names)
            (ids,),
        ).fetchone()[0]
        for table in ("recordings", "chunks", "chunk_vectors", "embedded_recordings", "recording_errors")
    }


def current(conn: psycopg.Connection) -> int:
    """Recordings whose current transcript has vectors of the model."""
    return conn.execute(
        """SELECT count(*) FROM embed_assets.recordings r JOIN embed_assets.embedded_recordings e
           ON e.recording_id = r.recording_id AND e.model = %s AND e.source_hash = r.content_hash""",
        (MODEL,),
    ).fetchone()[0]


def test_deleted_recordings_are_removed_not_failed_and_the_rest_embed(
    conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path, home_instance
) -> None:
    """60 calls loaded and embedded; 3 rows deleted from embed_assets.recordings (the documented way to remove a
    recording), 2 others edited; one `embed`: exit 0, 57 current, the deleted ones without rows or partitions,
    "removed 3" in the summary. The old code failed the 3 and marked the others of their runs "not embedded: its
    run failed", exit 1, on every `embed` (nothing removed their partitions without the daemon)."""
    home, open_instance = home_instance
    assert cli("sample", "60", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    first = cli("embed", home=home, dagster_db=dagster_db)
    assert first.returncode == 0, first.stdout + first.stderr
    assert current(conn) == 60
    ids = recording_ids(conn)
    deleted = [ids[10], ids[31], ids[57]]  # inside the partition range one run covers
    for rid in deleted:
        delete_recording(conn, rid)
    edited = [ids[5], ids[40]]
    calls = tmp_path / "edited.jsonl"
    calls.write_text(
        "\n".join(
            json.dumps(
                {"recording_id": rid, "segments": [{"speaker": "Dana", "text": f"an edited transcript of {rid}"}]}
            )
            for rid in edited
        )
    )
    loaded = cli("load", str(calls), home=home, dagster_db=dagster_db)
    assert loaded.returncode == 0 and "changed 2" in loaded.stdout, loaded.stdout + loaded.stderr

    proc = cli("embed", home=home, dagster_db=dagster_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = summary_figures(proc.stdout)
    assert number(shown["recordings removed"]) == 3
    assert number(shown["recordings failed"]) == 0 and number(shown["recordings embedded"]) == 2
    assert "removed 3 recording(s) no longer in the source tables" in proc.stdout
    assert not re.search(r"^failed ", proc.stdout, re.MULTILINE) and "not embedded" not in proc.stdout
    assert current(conn) == 57 == len(recording_ids(conn))
    assert rows_of(conn, deleted) == dict.fromkeys(rows_of(conn, deleted), 0)
    with open_instance() as instance:
        partitions = instance.get_dynamic_partitions("recordings")
        assert sorted(partitions) == recording_ids(conn) and not set(deleted) & set(partitions)

        # The sensor, applying the same deletions (its tombstone cursor from the start), finds nothing to do.
        result = new_recordings_sensor(dg.build_sensor_context(instance=instance, cursor=None, resources=RESOURCES))
        assert not [
            r for r in result.dynamic_partitions_requests or [] if isinstance(r, dg.DeleteDynamicPartitionsRequest)
        ]
        assert not result.run_requests

    again = cli("embed", home=home, dagster_db=dagster_db)
    assert again.returncode == 0 and "nothing to embed" in again.stdout and "removed" not in again.stdout
    status = cli("status", "--json", home=home, dagster_db=dagster_db)
    data = json.loads(status.stdout)
    assert status.returncode == 0, status.stdout + status.stderr
    assert (data["recordings"], data["embedded_current"], data["failed"], data["verdict"]) == (57, 57, 0, "healthy")


def test_a_recording_deleted_by_the_sensor_first_is_not_removed_twice(
    conn: psycopg.Connection, fake_openai, dagster_db: str, home_instance
) -> None:
    """The sensor ticked after the deletion (it deleted the partition by its tombstone): `embed` finds nothing to
    remove and reports no removal."""
    home, open_instance = home_instance
    assert cli("sample", "3", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    ids = recording_ids(conn)
    delete_recording(conn, ids[1])
    with open_instance() as instance:
        result = new_recordings_sensor(dg.build_sensor_context(instance=instance, cursor=None, resources=RESOURCES))
        for req in result.dynamic_partitions_requests or []:
            if isinstance(req, dg.DeleteDynamicPartitionsRequest):
                for key in req.partition_keys:
                    instance.delete_dynamic_partition(req.partitions_def_name, key)
        assert ids[1] not in instance.get_dynamic_partitions("recordings")
    proc = cli("embed", home=home, dagster_db=dagster_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert number(summary_figures(proc.stdout)["recordings removed"]) == 0
    assert number(summary_figures(proc.stdout)["recordings embedded"]) == 2


def test_a_call_removed_from_the_users_tables_is_removed_by_embed(
    conn: psycopg.Connection, app_db, fake_openai, dagster_db: str, home_instance, tmp_path: Path, monkeypatch
) -> None:
    """EMBED_SOURCE: a call deleted from the user's own tables leaves the registry (its chunks and vectors with
    it) and its partition when `embed` reads the source, reported as removed; a changed call is embedded again."""
    home, open_instance = home_instance
    admin, reader = app_db
    for call in (7, 8, 9):
        add_call(admin, call, json.dumps(turns(call)))
    monkeypatch.setenv("FATHOM_DATABASE_URL", reader)
    monkeypatch.setenv("EMBED_SOURCE", str(source_file(tmp_path, JSON_SOURCE)))
    first = cli("embed", home=home, dagster_db=dagster_db)
    assert first.returncode == 0 and current(conn) == 3, first.stdout + first.stderr
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DELETE FROM fathom_calls WHERE id = 8")
    add_call(admin, 9, json.dumps(turns(9, changed=2)))

    proc = cli("embed", home=home, dagster_db=dagster_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 removed" in proc.stdout and re.search(
        r"^removed 1 recording\(s\) no longer in the source .*: 8$", proc.stdout, re.M
    )
    shown = summary_figures(proc.stdout)
    assert number(shown["recordings removed"]) == 1 and number(shown["recordings failed"]) == 0
    assert number(shown["recordings embedded"]) == 1  # call 9, changed
    assert current(conn) == 2 and rows_of(conn, ["8"]) == dict.fromkeys(rows_of(conn, ["8"]), 0)
    with open_instance() as instance:
        assert sorted(instance.get_dynamic_partitions("recordings")) == ["7", "9"]
