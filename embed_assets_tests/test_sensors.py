"""new_recordings_sensor on a real Dagster instance and the real embedded Postgres."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.sensors import RANGE_END_TAG, RANGE_START_TAG, new_recordings_sensor
from embed_assets.lib.settings import RECORDINGS_PER_RUN
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.sensor_requests import covered

RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}


@pytest.fixture(autouse=True)
def settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def rec(rid: str, text: str = "hello") -> Transcript:
    return Transcript(rid, (Segment("A", f"{text} from {rid}"),))


def tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    """One evaluation, then apply its partition requests as the daemon would."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
    result = new_recordings_sensor(ctx)
    for req in result.dynamic_partitions_requests or []:
        if isinstance(req, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        else:
            for key in req.partition_keys:
                instance.delete_dynamic_partition(req.partitions_def_name, key)
    return result


def test_new_changed_unchanged_and_deleted(conn: psycopg.Connection, instance: dg.DagsterInstance) -> None:
    for rid in ("r1", "r2", "r3"):
        upsert_transcript(conn, rec(rid))
    first = tick(instance, None)
    assert sorted(covered(instance, first)) == ["r1", "r2", "r3"]
    assert sorted(instance.get_dynamic_partitions("recordings")) == ["r1", "r2", "r3"]
    assert len(first.run_requests) == 1  # three new, consecutive partitions: one run over the range
    run_keys = {r.run_key for r in first.run_requests}

    # nothing changed: nothing requested, nothing added (a fresh context from the stored cursor = a restart)
    second = tick(instance, first.cursor)
    assert covered(instance, second) == [] and not second.dynamic_partitions_requests

    upsert_transcript(conn, rec("r1"))  # identical content: unchanged
    upsert_transcript(conn, rec("r2", "changed"))
    third = tick(instance, second.cursor)
    assert covered(instance, third) == ["r2"] and third.run_requests[0].run_key not in run_keys

    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'r3'")
    fourth = tick(instance, third.cursor)
    assert covered(instance, fourth) == []
    assert sorted(instance.get_dynamic_partitions("recordings")) == ["r1", "r2"]


def test_run_keys_are_deterministic_per_content(conn: psycopg.Connection, instance: dg.DagsterInstance) -> None:
    upsert_transcript(conn, rec("r1"))
    a = tick(instance, None).run_requests[0].run_key
    with dg.instance_for_test() as other:
        b = tick(other, None).run_requests[0].run_key
    assert a == b


def test_already_embedded_and_failed_recordings_are_not_requested(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    for rid in ("done", "failed", "new"):
        upsert_transcript(conn, rec(rid))
    h = dict(conn.execute("SELECT recording_id, content_hash FROM embed_assets.recordings").fetchall())
    conn.execute(
        "INSERT INTO embed_assets.embedded_recordings (recording_id, model, source_hash, chunk_count) "
        "VALUES ('done', %s, %s, 1)",
        ("all-MiniLM-L6-v2", h["done"]),
    )
    conn.execute(
        """INSERT INTO embed_assets.recording_errors (recording_id, model, source_hash, asset, error)
           VALUES ('failed', 'all-MiniLM-L6-v2', %s, 'chunk_embeddings', 'boom')""",
        (h["failed"],),
    )
    result = tick(instance, None)
    assert covered(instance, result) == ["new"]
    assert sorted(instance.get_dynamic_partitions("recordings")) == ["done", "failed", "new"]


def test_a_deleted_then_reloaded_recording_keeps_its_partition(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    upsert_transcript(conn, rec("r1"))
    cursor = tick(instance, None).cursor
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'r1'")
    upsert_transcript(conn, rec("r1", "back"))
    result = tick(instance, cursor)
    assert covered(instance, result) == ["r1"] and instance.get_dynamic_partitions("recordings") == ["r1"]


def bulk_recordings(conn: psycopg.Connection, n: int) -> None:
    """n source rows in one COPY (the sensor reads only `recordings`)."""
    buf = io.StringIO("".join(f"bulk-{i:06d}\tbulkhash{i}\t1\n" for i in range(n)))
    with conn.cursor().copy(
        "COPY embed_assets.recordings (recording_id, content_hash, segment_count) FROM STDIN"
    ) as copy:
        copy.write(buf.getvalue())


def test_10000_new_recordings_in_one_tick_without_flooding_the_queue(
    conn: psycopg.Connection, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBED_SENSOR_MAX_RUNS", "40")
    bulk_recordings(conn, 10_000)
    started = time.perf_counter()
    first = tick(instance, None)
    elapsed = time.perf_counter() - started
    print(f"sensor tick over 10,000 new recordings: {elapsed:.2f}s")
    assert len(first.run_requests) == 40  # the per-tick bound
    assert len(instance.get_dynamic_partitions("recordings")) == 10_000  # every partition, in one tick
    # consecutive new partitions share runs of RECORDINGS_PER_RUN, as a backfill's do: 40 runs take 4,000
    assert len(covered(instance, first)) == 40 * RECORDINGS_PER_RUN == len(set(covered(instance, first)))
    second = tick(instance, first.cursor)
    assert len(second.run_requests) == 40 and len(covered(instance, second)) == 40 * RECORDINGS_PER_RUN
    assert not set(covered(instance, first)) & set(covered(instance, second))  # the cursor moved on: no duplicates
    assert json.loads(second.cursor)["id"] > json.loads(first.cursor)["id"]


def test_consecutive_partitions_share_a_run_and_scattered_ones_get_one_each(
    conn: psycopg.Connection, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"r{i}" for i in range(6)]
    for rid in ids:
        upsert_transcript(conn, rec(rid))
    first = tick(instance, None)
    (only,) = first.run_requests  # six new, consecutive partitions: one run over the range
    assert only.partition_key is None and (only.tags[RANGE_START_TAG], only.tags[RANGE_END_TAG]) == ("r0", "r5")

    for rid in ("r1", "r2", "r4"):  # r1-r2 are consecutive partitions, r4 stands alone
        upsert_transcript(conn, rec(rid, "changed"))
    second = tick(instance, first.cursor)
    assert sorted(covered(instance, second)) == ["r1", "r2", "r4"] and len(second.run_requests) == 2
    single = next(r for r in second.run_requests if r.partition_key is not None)
    assert single.partition_key == "r4"

    # More scattered recordings than runs a tick allows: a run each, the rest on the next tick, none lost.
    monkeypatch.setenv("EMBED_SENSOR_MAX_RUNS", "2")
    for rid in ("r0", "r2", "r4"):
        upsert_transcript(conn, rec(rid, "again"))
    third = tick(instance, second.cursor)
    fourth = tick(instance, third.cursor)
    assert len(third.run_requests) == 2 and all(r.partition_key for r in third.run_requests)
    assert sorted(covered(instance, third) + covered(instance, fourth)) == ["r0", "r2", "r4"]
