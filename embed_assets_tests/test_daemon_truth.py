"""Issues 34 and 37 under the real Dagster daemon (`dagster dev` on a home and database of the test's own): the
sensor's own range runs, launched and dequeued by the daemon, not `execute_in_process`. One unreadable call among
20 fails alone (partition statuses, `status --json`, the retry schedule's evaluation); a recording deleted while
its range run waits in the run queue holds back nothing (the others materialize, nothing FAILED, no error rows,
the deleted ones leave no rows and, after the run and a later tick, no partitions).

Real components only: the embedded Postgres, the loopback OpenAI server, the daemon's sensor and run queue.
Every wait polls for a condition with a bounded deadline."""

# ruff: noqa: F811 (fixtures imported from the modules that define them are parameters of the tests below)
from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END_TAG
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START_TAG
from dagster._core.storage.tags import SENSOR_NAME_TAG
from psycopg import sql

from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.dagster_dev import DagsterDev, make_home
from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.test_console import cli
from embed_assets_tests.test_source_tables import (  # noqa: F401 (app_db and use_source are fixtures)
    JSON_SOURCE,
    RESOURCES,
    add_call,
    app_db,
    turns,
    use_source,
)

# Only what the project had before the fixes is imported, so this file also runs against the commits before them.
SENSOR = "new_recordings_sensor"
POOL = "embedding_provider"
EMBEDDINGS = dg.AssetKey("chunk_embeddings")
DONE, FAILED = dg.AssetPartitionStatus.MATERIALIZED, dg.AssetPartitionStatus.FAILED
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float) -> object:
    """Poll until ``predicate`` returns something truthy (coordination only, never a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def daemon_env(monkeypatch: pytest.MonkeyPatch, home: Path, dagster_db: str) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")
    monkeypatch.setenv("EMBED_RETRY_CRON", "0 3 1 1 *")  # the sensor's runs alone; the test evaluates the schedule


def sensor_range_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    runs = instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: SENSOR}))
    return [r for r in runs if RANGE_START_TAG in r.tags and RANGE_END_TAG in r.tags]


def members(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The partitions a range run covers, in the partitions' own order."""
    keys = list(instance.get_dynamic_partitions("recordings"))
    return keys[keys.index(run.tags[RANGE_START_TAG]) : keys.index(run.tags[RANGE_END_TAG]) + 1]


def statuses(instance: dg.DagsterInstance, keys: list[str]) -> dict:
    return instance.get_status_by_partition(EMBEDDINGS, keys, recordings_partitions)


def retry_requests(instance: dg.DagsterInstance) -> list[str] | dg.SkipReason:
    """One evaluation of the retry schedule against ``instance`` (as test_partial_runs does)."""
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC), resources=RESOURCES)
    result = retry_failed_recordings(ctx)
    return result if isinstance(result, dg.SkipReason) else sorted(r.partition_key for r in result)


def holding(instance: dg.DagsterInstance) -> list[str]:
    """Run ids holding a slot of the provider pool."""
    return [s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots]


def finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.status in FINISHED else None


def ticks_after(instance: dg.DagsterInstance, at: float) -> list:
    """Completed ticks of the sensor that started after ``at`` (epoch seconds), as the daemon records them."""
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == SENSOR]
    return [
        t
        for s in states
        for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, after=at, limit=10)
        if t.status in (TickStatus.SUCCESS, TickStatus.SKIPPED)
    ]


@pytest.mark.slow
def test_under_the_daemon_one_bad_call_among_20_fails_alone(
    conn: psycopg.Connection,
    use_source,
    fake_openai: FakeOpenAI,
    dagster_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 37's scenario through the daemon's sensor: 20 calls in the user's own (Fathom-shaped) tables, call 7
    with a NULL transcript, one range run over the 20. Before the fix every partition of the range was FAILED and
    `status` said 20 failed."""
    admin = use_source(JSON_SOURCE)
    for call in range(1, 21):
        add_call(admin, call, None if call == 7 else json.dumps(turns(call)))
    keys = [str(c) for c in range(1, 21)]
    home = make_home(tmp_path / "dagster_home")
    daemon_env(monkeypatch, home, dagster_db)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        with DagsterDev(home, {}, tmp_path / "dagster-dev.log", progress=lambda _: None):
            (run,) = wait_for(lambda: sensor_range_runs(instance), "the sensor's range run", 240)
            assert sorted(members(instance, run)) == sorted(keys)  # one run over the 20
            run = wait_for(lambda: finished(instance, run.run_id), "the range run to finish", 240)
            assert run.status == dg.DagsterRunStatus.FAILURE  # one real failure: said so, by the run's status too
            assert len(instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: SENSOR}))) == 1

            # Dagster's own per-partition status: only the unreadable call FAILED.
            assert statuses(instance, keys) == {**dict.fromkeys(keys, DONE), "7": FAILED}

            data = json.loads(cli("status", "--json", home=home, dagster_db=dagster_db).stdout)
            assert (data["embedded_current"], data["failed"], data["unreadable_source_rows"]) == (19, 1, 1), data
            assert data["failed_ids"] == ["7"] and list(data["last_errors"]) == ["7"], data
            assert "unreadable source row: recording '7'" in data["last_errors"]["7"]["error"]
            assert "the transcript is NULL" in data["last_errors"]["7"]["error"]

            # The retry schedule, evaluated against the daemon's instance: none of the 19 healthy calls is
            # re-launched (before: 19 small-batch runs); the one failure is an unreadable row, which only a change
            # of the row can help (the sensor sees that), so it waits for its fix rather than a retry.
            skipped = retry_requests(instance)
            assert isinstance(skipped, dg.SkipReason), skipped
            assert skipped.skip_message.startswith("1 failed") and "waiting for a fix: 1" in skipped.skip_message


def delete_recordings(conn: psycopg.Connection, ids: list[str]) -> None:
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = ANY(%s)", (ids,))


def rows_of(conn: psycopg.Connection, ids: list[str]) -> dict[str, int]:
    tables = ("recordings", "chunks", "transcript_chunks", "chunk_vectors", "embedded_recordings", "recording_errors")
    count = sql.SQL("SELECT count(*) FROM embed_assets.{} WHERE recording_id = ANY(%s)")
    return {t: conn.execute(count.format(sql.Identifier(t)), (ids,)).fetchone()[0] for t in tables}


@pytest.mark.slow
def test_under_the_daemon_a_recording_deleted_before_its_range_run_starts_holds_back_nothing(
    conn: psycopg.Connection, fake_openai: FakeOpenAI, dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 34 under the daemon: the sensor requests a range run over r-0..r-5; while it waits in the run queue
    (the test home's queue admits one run, and a first run is held at the provider by the loopback server), r-2
    (inside the range) and r-5 (its last partition) are deleted and a sensor tick sees the deletions. Then the
    queue frees up and the range run starts. Before bfa81bd the sensor deleted r-5's partition at once and the run
    failed as a whole in its first step ("Partition range r-0 to r-5 is not valid"), r-0, r-1, r-3, r-4 included."""
    home = make_home(tmp_path / "dagster_home")
    config = (home / "dagster.yaml").read_text()
    assert config.count("max_concurrent_runs: 4") == 1
    (home / "dagster.yaml").write_text(config.replace("max_concurrent_runs: 4", "max_concurrent_runs: 1"))
    daemon_env(monkeypatch, home, dagster_db)
    ids = [f"r-{i}" for i in range(6)]
    gone, kept = ["r-2", "r-5"], ["r-0", "r-1", "r-3", "r-4"]

    def rec(rid: str) -> Transcript:
        return Transcript(
            rid, tuple(Segment("A", f"{rid} turn {j}: the renewal terms and the rollout") for j in range(6))
        )

    with dg.DagsterInstance.from_config(str(home)) as instance:
        fake_openai.gate.clear()  # provider requests wait until the test opens the gate
        try:
            upsert_transcript(conn, rec("hold"))
            with DagsterDev(home, {}, tmp_path / "dagster-dev.log", progress=lambda _: None):
                (holder,) = wait_for(lambda: holding(instance), "the first run to wait at the provider", 240)
                for rid in ids:
                    upsert_transcript(conn, rec(rid))
                (queued,) = wait_for(lambda: sensor_range_runs(instance), "the sensor's range run", 120)
                assert (queued.tags[RANGE_START_TAG], queued.tags[RANGE_END_TAG]) == ("r-0", "r-5")
                assert set(instance.get_dynamic_partitions("recordings")) >= {"hold", *ids}

                delete_recordings(conn, gone)
                deleted_at = time.time()
                wait_for(lambda: ticks_after(instance, deleted_at), "a sensor tick after the deletions", 120)
                # The run has not started: it waits in the queue behind the held run.
                assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.QUEUED
                assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.STARTED
                assert "r-2" not in instance.get_dynamic_partitions("recordings")  # inside the range: gone at once

                fake_openai.gate.set()  # the first run finishes; the queue lets the range run start
                run = wait_for(lambda: finished(instance, queued.run_id), "the range run to finish", 240)
                assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
                assert statuses(instance, kept) == dict.fromkeys(kept, DONE)
                assert statuses(instance, ["hold"]) == {"hold": DONE}
                assert conn.execute("SELECT count(*) FROM embed_assets.recording_errors").fetchone()[0] == 0
                assert rows_of(conn, gone) == dict.fromkeys(rows_of(conn, gone), 0)
                embedded = {r[0] for r in conn.execute("SELECT recording_id FROM embed_assets.embedded_recordings")}
                assert embedded == {"hold", *kept}

                # A later tick removes what is left of the deleted recordings: their partitions.
                wait_for(
                    lambda: not set(gone) & set(instance.get_dynamic_partitions("recordings")),
                    "the deleted recordings' partitions to be removed",
                    120,
                )
                left = [k for k in instance.get_dynamic_partitions("recordings") if k.startswith("r-")]
                assert left == kept
                assert FAILED not in statuses(instance, left).values()
                assert len(sensor_range_runs(instance)) == 1  # no second run over the range
        finally:
            fake_openai.gate.set()
