"""chunk_integrity over recordings read from the user's own tables (EMBED_SOURCE): coverage is checked against the
segments the chunker read (their seqs, recorded at chunk time), not transcript_segments, which is empty for them.
A second database as the application's, the real sensor, a real Dagster run, the loopback OpenAI server."""

from __future__ import annotations

import json

import dagster as dg
import psycopg

from embed_assets.lib.health.integrity import check_integrity
from embed_assets_tests.test_sensors import tick
from embed_assets_tests.test_source_tables import (  # noqa: F401 (fixtures)
    JSON_SOURCE,
    MODEL,
    add_call,
    app_db,
    instance,
    run,
    settle,
    turns,
    use_source,
)


def integrity_checks(result: dg.ExecuteInProcessResult) -> list[dg.AssetCheckEvaluation]:
    return [e for e in result.get_asset_check_evaluations() if e.check_name == "chunk_integrity"]


def test_chunk_integrity_passes_for_recordings_read_from_the_users_tables_and_still_catches_gaps(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811 (the fixture imported above)
    use_source,  # noqa: F811
    fake_openai,
) -> None:
    admin = use_source(JSON_SOURCE)
    for call in (1, 2):
        add_call(admin, call, json.dumps(turns(call)))  # turn 5 is empty: skipped, its seq kept by the others
    tick(instance, None)
    result = run(instance, ["1", "2"])
    assert result.success
    (check,) = integrity_checks(result)
    assert check.passed, check.description  # before: "coverage gaps" for every source recording, at ERROR
    assert check.metadata["coverage_gaps"].value == 0 and check.metadata["embedded_recordings"].value == 2
    assert conn.execute("SELECT count(*) FROM embed_assets.transcript_segments").fetchone()[0] == 0
    assert conn.execute(
        "SELECT segment_count, segment_seqs FROM embed_assets.recordings WHERE recording_id = '1'"
    ).fetchone() == (13, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13])
    assert check_integrity(conn, MODEL).ok

    # Real corruption of a source recording still fails the check.
    spans = conn.execute(
        "SELECT chunk_index, first_seq, last_seq FROM embed_assets.chunks "
        "WHERE recording_id = '1' AND model = %s ORDER BY chunk_index",
        (MODEL,),
    ).fetchall()
    assert len(spans) > 1
    first, last = spans[0], spans[-1]
    assert first[2] < 13 and last[2] == 13
    change = """UPDATE embed_assets.chunks SET first_seq = coalesce(%(f)s, first_seq),
                                             last_seq = coalesce(%(l)s, last_seq)
                WHERE recording_id = '1' AND chunk_index = %(i)s"""
    corruptions = [
        ("the first segment uncovered", {"f": first[2], "l": None, "i": first[0]}),
        ("the last segment uncovered", {"f": None, "l": 12, "i": last[0]}),
        ("a chunk ending on the skipped turn 5", {"f": None, "l": 5, "i": first[0]}),
        ("a chunk past the last segment read", {"f": None, "l": 14, "i": last[0]}),
    ]
    for what, params in corruptions:
        with conn.transaction():
            assert conn.execute(change, params).rowcount == 1, what
            found = check_integrity(conn, MODEL)
            raise psycopg.Rollback
        assert found.coverage_gaps == 1 and found.examples == ["1"], what
    assert check_integrity(conn, MODEL).ok
