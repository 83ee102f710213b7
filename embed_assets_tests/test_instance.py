"""The project's own Dagster instance (dagster.yaml -> embed_assets/instance.py) on a real Postgres: a run over
a partition range stores each step's per-partition materializations in one batch, and every partition is
still recorded once and shown MATERIALIZED."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from embed_assets.definitions import defs
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.conftest import REPO

ASSETS = (dg.AssetKey("transcript_chunks"), dg.AssetKey("chunk_embeddings"))


@pytest.fixture
def project_home(dagster_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """DAGSTER_HOME of the project (its dagster.yaml) on a Dagster database of this test's own."""
    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    yield str(REPO)


def _spy_batches(instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> list[list]:
    """Record what reaches the real storage's store_event_batch, then let it store as usual."""
    storage = instance.event_log_storage
    original, batches = storage.store_event_batch, []

    def recording(events):
        batches.append(list(events))
        return original(events)

    monkeypatch.setattr(storage, "store_event_batch", recording)
    return batches


def _range_run(conn: psycopg.Connection, instance: dg.DagsterInstance, n: int) -> list[str]:
    ids = [f"inst-{i}" for i in range(n)]
    for i, rid in enumerate(ids):
        upsert_transcript(conn, Transcript(rid, tuple(Segment("A", f"turn {i} {j} about pricing") for j in range(4))))
    instance.add_dynamic_partitions("recordings", ids)
    result = defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]},
        raise_on_error=False,
    )
    assert result.success
    return ids


def _stored_materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[str]:
    records = instance.fetch_materializations(key, limit=1000).records
    return sorted(r.partition_key for r in records)


def test_a_range_run_stores_each_steps_materializations_in_one_batch(
    conn, project_home, fake_openai, monkeypatch
) -> None:
    instance = dg.DagsterInstance.from_config(project_home)  # its event storage turns batching on
    try:
        batches = _spy_batches(instance, monkeypatch)
        storage, inserts = instance.event_log_storage, []
        prepare = storage.prepare_insert_event_batch

        def insert(events):  # what each insert statement carries
            inserts.append(sorted(e.dagster_event.partition for e in events if e.dagster_event.is_step_materialization))
            return prepare(events)

        monkeypatch.setattr(storage, "prepare_insert_event_batch", insert)
        ids = _range_run(conn, instance, 4)
        materialized = [
            sorted(e.dagster_event.partition for e in batch)
            for batch in batches
            if {e.dagster_event_type for e in batch} == {dg.DagsterEventType.ASSET_MATERIALIZATION}
        ]
        assert materialized == [ids, ids]  # one batch per asset, each with every partition
        assert [i for i in inserts if i] == [ids, ids]  # each batch in one insert statement, not one per event
        for key in ASSETS:
            assert _stored_materializations(instance, key) == ids  # each stored exactly once
            status = instance.get_status_by_partition(key, ids, defs.resolve_assets_def(key).partitions_def)
            assert status == dict.fromkeys(ids, dg.AssetPartitionStatus.MATERIALIZED)
    finally:
        instance.dispose()


def test_a_users_setting_of_the_batch_size_is_kept(conn, project_home, fake_openai, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")  # the user turned batching off
    instance = dg.DagsterInstance.from_config(project_home)
    try:
        batches = _spy_batches(instance, monkeypatch)
        ids = _range_run(conn, instance, 3)
        assert batches == []  # one event at a time, as Dagster does by default
        for key in ASSETS:
            assert _stored_materializations(instance, key) == ids
    finally:
        instance.dispose()


def test_a_runs_planned_events_go_in_one_insert_and_failed_partitions_still_show_failed(
    conn, project_home, fake_openai, monkeypatch
) -> None:
    instance = dg.DagsterInstance.from_config(project_home)
    try:
        storage = instance.event_log_storage
        original, inserts = storage._store_planned, []

        def recording(events):
            if len(events) > 1:
                inserts.append(
                    [(e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition) for e in events]
                )
            return original(events)

        monkeypatch.setattr(storage, "_store_planned", recording)
        ids = [f"plan-{i}" for i in range(3)]
        for rid in ids:
            upsert_transcript(conn, Transcript(rid, (Segment("A", f"{rid} about pricing"),)))
        instance.add_dynamic_partitions("recordings", ids)
        job = defs.resolve_job_def("embed_recordings")
        tags = {"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]}
        # The first run fails as a whole (a source definition that does not exist: a configuration error in its
        # first step). A recording missing from the source no longer does: it is removed, not failed (issue 34).
        monkeypatch.setenv("EMBED_SOURCE", str(Path(project_home) / "no-such-source.yaml"))
        first = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        monkeypatch.delenv("EMBED_SOURCE")
        assert not first.success
        # every partition of both assets planned, each once, in one insert
        assert len(inserts) == 1 and sorted(inserts[0]) == sorted((k.to_user_string(), r) for k in ASSETS for r in ids)
        for key in ASSETS:
            planned = instance.get_event_records(
                dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=key), limit=100
            )
            assert sorted(r.partition_key for r in planned) == ids
            assert instance.get_asset_records([key])[0].asset_entry.last_run_id == first.run_id
            status = instance.get_status_by_partition(key, ids, defs.resolve_assets_def(key).partitions_def)
            assert status == dict.fromkeys(ids, dg.AssetPartitionStatus.FAILED)  # planned in a failed run
        second = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        assert second.success
        for key in ASSETS:
            status = instance.get_status_by_partition(key, ids, defs.resolve_assets_def(key).partitions_def)
            assert status == dict.fromkeys(ids, dg.AssetPartitionStatus.MATERIALIZED)
            assert instance.get_asset_records([key])[0].asset_entry.last_run_id == second.run_id
    finally:
        instance.dispose()
