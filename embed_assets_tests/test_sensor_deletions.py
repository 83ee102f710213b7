"""A recording deleted while a range run that names it waits in the queue (issue 34): the sensor holds back the
deletion of a partition that bounds a queued or running range run, since Dagster resolves the range when the run
starts and a missing bound fails the whole run, its other recordings included. The deletion follows once no
unfinished run names it."""

from __future__ import annotations

import json

import dagster as dg
import psycopg

from embed_assets.defs.runs import RANGE_END_TAG, RANGE_START_TAG
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.test_run_keys import add_run, rec, tick
from embed_assets_tests.test_sensors import instance, settle  # noqa: F401 (fixtures)


def test_a_bound_of_a_queued_range_run_is_deleted_only_after_the_run_ends(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811 (the fixture imported above)
) -> None:
    ids = [f"rd-{i}" for i in range(5)]
    for rid in ids:
        upsert_transcript(conn, rec(rid, "the renewal"))
    first = tick(instance, None)
    assert [r.tags.get(RANGE_START_TAG) for r in first.run_requests] == ["rd-0"]
    queued = add_run(
        instance, {RANGE_START_TAG: "rd-0", RANGE_END_TAG: "rd-4"}, dg.DagsterRunStatus.NOT_STARTED
    )  # launched, not started yet
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = ANY(%s)", (["rd-4", "rd-2"],))

    second = tick(instance, first.cursor)
    partitions = set(instance.get_dynamic_partitions("recordings"))
    assert "rd-4" in partitions, "a bound of a queued range run was deleted: the run would fail as a whole"
    assert "rd-2" not in partitions  # inside the range: Dagster resolves the range without it
    assert json.loads(second.cursor)["held_deletes"] == ["rd-4"]

    third = tick(instance, second.cursor)  # still queued: still held, still remembered
    assert "rd-4" in instance.get_dynamic_partitions("recordings")
    assert json.loads(third.cursor)["held_deletes"] == ["rd-4"]

    instance.report_run_failed(queued)  # the run ended (any outcome)
    fourth = tick(instance, third.cursor)
    assert "rd-4" not in instance.get_dynamic_partitions("recordings")
    assert json.loads(fourth.cursor)["held_deletes"] == []


def test_a_held_deletion_is_dropped_when_the_recording_is_loaded_again(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811 (the fixture imported above)
) -> None:
    for rid in ("rl-0", "rl-1", "rl-2"):
        upsert_transcript(conn, rec(rid, "the renewal"))
    first = tick(instance, None)
    queued = add_run(instance, {RANGE_START_TAG: "rl-0", RANGE_END_TAG: "rl-2"}, dg.DagsterRunStatus.NOT_STARTED)
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'rl-2'")
    second = tick(instance, first.cursor)
    assert json.loads(second.cursor)["held_deletes"] == ["rl-2"]
    upsert_transcript(conn, rec("rl-2", "the renewal"))  # back before the run ended
    instance.report_run_failed(queued)
    tick(instance, second.cursor)
    assert "rl-2" in instance.get_dynamic_partitions("recordings")
