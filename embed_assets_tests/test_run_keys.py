"""Work that is needed again gets a run again (issue 33, items 1, 2 and 9): run keys that change whenever a state
comes back, cancelled work picked up once, the hourly late-commit pass, and a tick at scale.

The sensor is evaluated with build_sensor_context on a real instance and the real embedded Postgres; its requests
are then applied as the daemon applies them (dagster/_daemon/sensor.py): a request whose run key this sensor has
seen is skipped, whatever that run's outcome, the others become runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.utils import make_new_run_id

from embed_assets.definitions import defs
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets.defs.sensors import new_recordings_sensor
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.change import drop, shadow
from embed_assets.lib.sources import registry
from embed_assets.lib.sources.external import SourceRow
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.dagster_dev import DagsterDev, make_home
from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.support.sensor_requests import covered

RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}
SENSOR = "new_recordings_sensor"


@pytest.fixture(autouse=True)
def settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def rec(rid: str, text: str) -> Transcript:
    return Transcript(rid, (Segment("A", f"{text} from {rid}"),))


def tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    """One evaluation, then its partition requests applied as the daemon would."""
    result = new_recordings_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES))
    for req in result.dynamic_partitions_requests or []:
        if isinstance(req, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        else:
            for key in req.partition_keys:
                instance.delete_dynamic_partition(req.partitions_def_name, key)
    return result


def seen_keys(instance: dg.DagsterInstance) -> set[str]:
    return {r.tags[RUN_KEY_TAG] for r in instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: SENSOR}))}


def add_run(instance: dg.DagsterInstance, tags: dict[str, str], status: dg.DagsterRunStatus) -> dg.DagsterRun:
    run = dg.DagsterRun(job_name="embed_recordings", run_id=make_new_run_id(), tags=tags, status=status)
    return instance.add_run(run)


def launch(
    instance: dg.DagsterInstance, result: dg.SensorResult, status: dg.DagsterRunStatus = dg.DagsterRunStatus.SUCCESS
) -> list[dg.RunRequest]:
    """The daemon's side of a tick: a request whose run key this sensor has seen is skipped
    (`fetch_existing_runs` / `SkippedSensorRun`); the others become runs (here recorded with ``status``)."""
    launched = []
    for r in result.run_requests or []:
        if instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: r.run_key, SENSOR_NAME_TAG: SENSOR})):
            continue
        tags = {**r.tags, RUN_KEY_TAG: r.run_key, SENSOR_NAME_TAG: SENSOR}
        if r.partition_key is not None:
            tags["dagster/partition"] = r.partition_key
        add_run(instance, tags, status)
        launched.append(r)
    return launched


def embed(conn: psycopg.Connection, recording_id: str) -> None:
    """What a successful run leaves: the recording marked embedded, for its current content, by every model."""
    conn.execute(
        """INSERT INTO embed_assets.embedded_recordings (recording_id, model, source_hash, chunk_count)
           SELECT r.recording_id, m.model, r.content_hash, 1 FROM embed_assets.recordings r, embed_assets.models m
           WHERE r.recording_id = %s
           ON CONFLICT (recording_id, model) DO UPDATE SET source_hash = EXCLUDED.source_hash""",
        (recording_id,),
    )


def launched_and_embedded(conn: psycopg.Connection, instance: dg.DagsterInstance, result: dg.SensorResult) -> list[str]:
    """Launch the tick's requests as the daemon would; the recordings whose runs started are embedded."""
    ran = covered(instance, dg.SensorResult(run_requests=launch(instance, result)))
    for rid in ran:
        embed(conn, rid)
    return ran


def test_a_transcript_that_returns_to_an_earlier_version_is_embedded_again(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    cursor = None
    for text in ("version A", "version B", "version A"):
        upsert_transcript(conn, rec("r1", text))
        seen = seen_keys(instance)
        result = tick(instance, cursor)
        cursor = result.cursor
        assert covered(instance, result) == ["r1"], text
        assert all(r.run_key not in seen for r in result.run_requests), f"{text}: a run key Dagster has seen"
        assert launched_and_embedded(conn, instance, result) == ["r1"], text


def test_a_recording_deleted_and_loaded_again_with_the_same_content_is_embedded_again(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    upsert_transcript(conn, rec("r1", "same"))
    first = tick(instance, None)
    assert launched_and_embedded(conn, instance, first) == ["r1"]
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'r1'")
    gone = tick(instance, first.cursor)
    assert instance.get_dynamic_partitions("recordings") == []
    upsert_transcript(conn, rec("r1", "same"))
    back = tick(instance, gone.cursor)
    assert covered(instance, back) == ["r1"]
    assert launched_and_embedded(conn, instance, back) == ["r1"]  # a new key: the daemon launches it


def test_a_source_row_that_leaves_the_source_and_returns_is_embedded_again(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    row = SourceRow("s1", "call", None, None, "source-hash-1")
    registry.register(conn, [row])  # the registry's upsert: what sync_source writes for the user's own tables
    first = tick(instance, None)
    assert launched_and_embedded(conn, instance, first) == ["s1"]
    assert registry.remove(conn, ["s1"]) == 1  # the row left the source query: its vectors went with it
    gone = tick(instance, first.cursor)
    assert registry.register(conn, [row]).added == 1  # ... and came back, unchanged
    back = tick(instance, gone.cursor)
    assert launched_and_embedded(conn, instance, back) == ["s1"]


def test_a_model_dropped_and_shadowed_again_is_embedded_again(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    upsert_transcript(conn, rec("r1", "text"))
    first = tick(instance, None)
    assert launched_and_embedded(conn, instance, first) == ["r1"]
    other = resolve_model("openai", "text-embedding-3-large", 256)
    cursor = first.cursor
    for _ in range(2):
        shadow(conn, other)
        result = tick(instance, cursor)
        cursor = result.cursor
        assert covered(instance, result) == ["r1"]
        assert launched_and_embedded(conn, instance, result) == ["r1"]
        drop(conn, other.model_id)  # its vectors and markers go; shadowing it again needs them again


def test_a_sensor_run_an_operator_cancelled_is_launched_again_once(
    conn: psycopg.Connection, instance: dg.DagsterInstance, fake_openai: FakeOpenAI
) -> None:
    upsert_transcript(conn, rec("r1", "text"))
    first = tick(instance, None)
    assert len(launch(instance, first, dg.DagsterRunStatus.CANCELED)) == 1  # the operator cancelled the sensor's run

    requests = evaluate(instance)  # the retry schedule's next tick picks the work up again
    assert not isinstance(requests, dg.SkipReason), requests.skip_message
    (resume,) = requests
    assert resume.partition_key == "r1" and resume.tags["embed_assets/trigger"] == "resume"
    assert resume.run_config == {} and resume.run_key not in seen_keys(instance)
    # the sensor's hourly pass leaves it to the schedule (no second path that ignores a deliberate cancel)
    cursor = json.loads(first.cursor)
    assert covered(instance, tick(instance, json.dumps({**cursor, "reconciled": 0}))) == []

    queued = add_run(instance, {**resume.tags, "dagster/partition": "r1"}, dg.DagsterRunStatus.NOT_STARTED)
    assert isinstance(evaluate(instance), dg.SkipReason)  # queued: not requested twice
    instance.report_run_canceled(queued)  # the operator cancels the re-launch too: respected
    assert isinstance(evaluate(instance), dg.SkipReason)

    # A cancelled sensor run again (a new version): picked up, and the re-launch, run for real, embeds it.
    upsert_transcript(conn, rec("r1", "changed"))
    second = tick(instance, first.cursor)
    launch(instance, second, dg.DagsterRunStatus.CANCELED)
    (resume,) = evaluate(instance)
    job = defs.resolve_job_def("embed_recordings")
    assert job.execute_in_process(instance=instance, partition_key="r1", tags=resume.tags).success
    assert isinstance(evaluate(instance), dg.SkipReason)  # embedded: nothing pending


def test_a_late_commit_after_a_cancelled_run_is_still_requested_by_the_hourly_pass(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    upsert_transcript(conn, rec("r1", "version A"))
    first = tick(instance, None)
    launch(instance, first, dg.DagsterRunStatus.CANCELED)
    upsert_transcript(conn, rec("r1", "version B"))  # written after that run was cancelled; its commit is late:
    late = {**json.loads(first.cursor), "ts": "2999-01-01T00:00:00+00:00", "id": "", "reconciled": 0}
    assert [r.partition_key for r in tick(instance, json.dumps(late)).run_requests] == ["r1"]


def evaluate(instance: dg.DagsterInstance):
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC), resources=RESOURCES)
    return retry_failed_recordings(ctx)


def _late_pass_setup(conn: psycopg.Connection, instance: dg.DagsterInstance) -> str:
    """60 dead-lettered or unreadable recordings and a tail, all seen by the sensor; then a commit that lands
    behind its cursor (between the failed rows and the tail). Returns the cursor with the hourly pass due."""
    tick(instance, None)  # registers the configured model
    conn.execute(
        """INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count, updated_at)
           SELECT format('bad-%s', lpad(i::text, 3, '0')), format('h%s', i), 1,
                  '2026-01-01'::timestamptz + i * interval '1 second'
           FROM generate_series(1, 60) i"""
    )
    conn.execute(
        """INSERT INTO embed_assets.recording_errors (recording_id, model, source_hash, asset, error, unreadable)
           SELECT r.recording_id, m.model, r.content_hash, 'chunk_embeddings', 'boom', r.recording_id > 'bad-030'
           FROM embed_assets.recordings r, embed_assets.models m"""
    )
    upsert_transcript(conn, rec("tail", "text"))
    seen = tick(instance, None)
    assert launched_and_embedded(conn, instance, seen) == ["tail"]  # the failed rows are the retry schedule's
    upsert_transcript(conn, rec("late", "text"))
    conn.execute("UPDATE embed_assets.recordings SET updated_at = '2026-01-02' WHERE recording_id = 'late'")
    return json.dumps({**json.loads(seen.cursor), "reconciled": 0})


def test_the_hourly_pass_finds_a_late_commit_behind_60_dead_lettered_rows(
    conn: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    cursor = _late_pass_setup(conn, instance)
    result = tick(instance, cursor)
    assert [r.partition_key for r in result.run_requests] == ["late"]


def test_the_hourly_pass_does_not_request_a_recording_whose_range_run_is_queued(
    conn: psycopg.Connection, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBED_SENSOR_MAX_RUNS", "100")  # room for every row behind the cursor: no starving here
    cursor = _late_pass_setup(conn, instance)
    instance.add_dynamic_partitions("recordings", ["late"])
    add_run(
        instance,
        {"dagster/asset_partition_range_start": "tail", "dagster/asset_partition_range_end": "late"},
        dg.DagsterRunStatus.NOT_STARTED,
    )
    assert tick(instance, cursor).run_requests == []  # its range run will write it
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.NOT_STARTED])):
        instance.report_run_failed(run)  # ... and once no run of it is left, the pass requests it
    assert [r.partition_key for r in tick(instance, cursor).run_requests] == ["late"]


def test_20000_adds_against_20000_deletions_in_one_tick(conn: psycopg.Connection, instance: dg.DagsterInstance) -> None:
    """A source re-keyed: every recording deleted (20,000 tombstones) and loaded again under new ids."""
    n = 20_000
    conn.execute(
        """INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count)
           SELECT 'old-' || lpad(i::text, 6, '0'), 'h' || i, 1 FROM generate_series(1, %s) i""",
        (n,),
    )
    old = [r[0] for r in conn.execute("SELECT recording_id FROM embed_assets.recordings ORDER BY 1")]
    instance.add_dynamic_partitions("recordings", old)
    conn.execute("DELETE FROM embed_assets.recordings")
    conn.execute(
        """INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count)
           SELECT 'new-' || lpad(i::text, 6, '0'), 'h' || i, 1 FROM generate_series(1, %s) i""",
        (n,),
    )
    ctx = dg.build_sensor_context(instance=instance, cursor=None, resources=RESOURCES)
    started = time.perf_counter()
    result = new_recordings_sensor(ctx)
    print(f"sensor tick, {n:,} adds against {n:,} deletions: {time.perf_counter() - started:.2f}s")
    adds = [r for r in result.dynamic_partitions_requests if isinstance(r, dg.AddDynamicPartitionsRequest)]
    deletes = [r for r in result.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
    assert sum(len(r.partition_keys) for r in adds) == n and sum(len(r.partition_keys) for r in deletes) == n
    assert result.run_requests and json.loads(result.cursor)["del"] > 0


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
    """Poll (coordination only: nothing is asserted about how long it took)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.mark.slow
def test_the_daemon_embeds_a_transcript_that_returns_to_an_earlier_version(
    tmp_path: Path,
    conn: psycopg.Connection,
    dagster_db: str,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real daemon (dagster dev): its sensor ticks and its run-key skipping decide, not this test."""
    home = make_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    monkeypatch.setenv("EMBED_RETRY_CRON", "0 3 1 1 *")  # the sensor alone
    model = conn.execute("SELECT model FROM embed_assets.models").fetchone()[0]

    def embedded_at(content_hash: str) -> bool:
        row = conn.execute(
            "SELECT source_hash FROM embed_assets.embedded_recordings WHERE recording_id = 'r1' AND model = %s",
            (model,),
        ).fetchone()
        return row is not None and row[0] == content_hash

    with DagsterDev(home, {}, tmp_path / "dagster-dev.log"):
        for text in ("version A", "version B", "version A"):
            t = rec("r1", text)
            upsert_transcript(conn, t)
            wait_for(lambda t=t: embedded_at(t.content_hash), f"r1 embedded at {text} by the daemon's sensor run")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: SENSOR}))
        assert len(runs) == 3 and len({r.tags[RUN_KEY_TAG] for r in runs}) == 3
    finally:
        instance.dispose()


def test_a_worker_role_without_ddl_rights_bumps_the_generation_on_every_write(conn: psycopg.Connection) -> None:
    """The trigger of migration 9 runs for any writer: `load` as a granted worker role, here."""
    from embed_assets.lib.db import roles

    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'generation_worker'").fetchone() is None:
        conn.execute("CREATE ROLE generation_worker LOGIN")
    roles.grant(conn, "generation_worker", "runtime")

    def generation() -> int:
        return conn.execute("SELECT generation FROM embed_assets.recordings WHERE recording_id = 'r1'").fetchone()[0]

    try:
        conn.execute("SET ROLE generation_worker")
        seen = []
        for text in ("version A", "version B", "version A", "version A"):
            upsert_transcript(conn, rec("r1", text))
            seen.append(generation())
        conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'r1'")
        upsert_transcript(conn, rec("r1", "version A"))
        seen.append(generation())
    finally:
        conn.execute("RESET ROLE")
        roles.revoke(conn, "generation_worker")
        conn.execute("DROP ROLE generation_worker")
    # every change and the re-insert take a new, larger generation; an unchanged load keeps it
    assert seen[0] < seen[1] < seen[2] == seen[3] < seen[4]
