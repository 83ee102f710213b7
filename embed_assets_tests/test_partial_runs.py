"""Per-recording truth in runs of many recordings (issue 37) and recordings deleted at read time (issue 34): one bad
or deleted recording never turns its run mates into failures. Real Dagster runs over partition ranges, the real
embedded Postgres, the real openai client against the loopback server, the `embed-assets` CLI in a subprocess."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from embed_assets.defs.alerts import latest_observation
from embed_assets.defs.monitoring import pipeline_health
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets.lib.health.messages import advice
from embed_assets.lib.health.status import db_status
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.support.openai_server import FakeOpenAI, Fault
from embed_assets_tests.test_assets import short
from embed_assets_tests.test_console import cli, number, summary_figures
from embed_assets_tests.test_source_tables import (  # noqa: F401 (app_db, settle and use_source are fixtures)
    JSON_SOURCE,
    MODEL,
    RESOURCES,
    add_call,
    app_db,
    settle,
    turns,
    use_source,
)

EMBEDDINGS = dg.AssetKey("chunk_embeddings")
CHUNKS = dg.AssetKey("transcript_chunks")
DONE, FAILED = dg.AssetPartitionStatus.MATERIALIZED, dg.AssetPartitionStatus.FAILED


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def statuses(instance: dg.DagsterInstance, keys: list[str], asset: dg.AssetKey = EMBEDDINGS) -> dict:
    return instance.get_status_by_partition(asset, keys, recordings_partitions)


def run_range(instance: dg.DagsterInstance, keys: list[str], embed_config: dict | None = None):
    from embed_assets.definitions import defs

    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    config = {"backoff_base_s": 0.01, "step_retry_delay_s": 0.1, **(embed_config or {})}
    return defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance,
        tags=tags,
        run_config={"ops": {"chunk_embeddings": {"config": config}}},
        raise_on_error=False,
    )


def retry_requests(instance: dg.DagsterInstance) -> list[str] | dg.SkipReason:
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC), resources=RESOURCES)
    result = retry_failed_recordings(ctx)
    return result if isinstance(result, dg.SkipReason) else sorted(r.partition_key for r in result)


def load(conn: psycopg.Connection, instance: dg.DagsterInstance, n: int) -> list[str]:
    ids = [f"call-{i:02d}" for i in range(n)]
    for rid in ids:
        upsert_transcript(conn, short(rid, extra=rid))
    instance.add_dynamic_partitions("recordings", ids)
    return ids


def test_one_unreadable_call_among_20_through_embed_fails_alone(
    conn: psycopg.Connection,
    use_source,  # noqa: F811 (the fixture imported above)
    fake_openai: FakeOpenAI,
    dagster_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 37's scenario: 20 calls in the user's own (Fathom-shaped) tables, one with a NULL transcript, one
    `embed-assets embed` (one run over the 20). Before: `chunk_embeddings` never materialized, all 20 partitions
    FAILED, the retry schedule re-launched 19 healthy calls and the summary said `tokens sent 0`."""
    admin = use_source(JSON_SOURCE)
    for call in range(1, 21):
        add_call(admin, call, None if call == 7 else json.dumps(turns(call)))
    home = tmp_path / "dagster_home"

    proc = cli("embed", home=home, dagster_db=dagster_db)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one recording failed: said so, by exit code too
    shown = summary_figures(proc.stdout)
    assert number(shown["recordings embedded"]) == 19
    assert number(shown["recordings failed"]) == 1
    assert number(shown["tokens sent"]) > 0 and number(shown["provider requests"]) > 0
    assert number(shown["chunks sent to the provider"]) > 0 and shown["estimated cost"] != "$0"
    failed = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("failed "))
    assert list(failed) == ["failed 7"] and "unreadable source row: recording '7'" in failed["failed 7"]

    monkeypatch.setenv("EMBED_DAGSTER_DATABASE_URL", dagster_db)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = [str(c) for c in range(1, 21)]
        assert statuses(instance, keys) == {**dict.fromkeys(keys, DONE), "7": FAILED}
        # The healthy 19 are not retried; the unreadable one waits for its row to change (the sensor sees that).
        assert isinstance(retry_requests(instance), dg.SkipReason)

    status = cli("status", "--json", home=home, dagster_db=dagster_db)
    data = json.loads(status.stdout)
    assert (data["embedded_current"], data["failed"], data["unreadable_source_rows"]) == (19, 1, 1), data
    assert data["failed_ids"] == ["7"] and "unreadable source row" in data["last_errors"]["7"]["error"]
    assert db_status(conn, MODEL).embedded_current == 19


def test_a_range_run_with_one_recording_failing_on_its_own_marks_only_it_failed(
    conn: psycopg.Connection, instance: dg.DagsterInstance, fake_openai: FakeOpenAI
) -> None:
    """20 recordings in one run; the provider fails the request carrying one window (a 500, no client retry, no
    step retry): its head recording fails with its own error, every other recording is written and MATERIALIZED
    with its own figures; only the failed one is retried."""
    keys = load(conn, instance, 20)
    fake_openai.fail_requests({2}, Fault(500))  # the first window is embedded; the second's request fails
    result = run_range(instance, keys, {"max_attempts": 1, "step_retries": 0, "embed_batch_size": 16})
    assert not result.success

    by_status = statuses(instance, keys)
    failed = [k for k, s in by_status.items() if s == FAILED]
    assert len(failed) == 1 and [k for k, s in by_status.items() if s == DONE] == [k for k in keys if k not in failed]
    assert statuses(instance, keys, CHUNKS) == dict.fromkeys(keys, DONE)
    errors = dict(conn.execute("SELECT recording_id, error FROM embed_assets.recording_errors").fetchall())
    assert list(errors) == failed and "TransientProviderError" in errors[failed[0]]

    # Each written recording's materialization carries its own figures, never another's.
    stored = [r.dagster_event for r in instance.all_logs(result.run_id) if r.dagster_event is not None]
    events = [e for e in stored if e.is_step_materialization and e.asset_key == EMBEDDINGS]
    assert sorted(e.partition for e in events) == sorted(k for k in keys if k not in failed)
    for e in events:
        md = e.step_materialization_data.materialization.metadata
        assert md["recording"].value == e.partition and md["vectors_written"].value > 0
    # What the provider was asked for is reported although the step failed.
    usage = [e for e in stored if e.is_asset_observation]
    assert len(usage) == 1
    md = usage[0].asset_observation_data.asset_observation.metadata
    assert md["tokens"].value > 0 and md["provider_requests"].value >= 2

    status = db_status(conn, MODEL)
    assert status.embedded_current == 19
    assert retry_requests(instance) == failed  # only the bad one
    # The health numbers and the alert's advice count the one failure (before: "20 recording(s) failed").
    dg.materialize([pipeline_health], instance=instance, resources=RESOURCES)
    observed = latest_observation(instance)
    assert observed is not None and observed.failed == 1
    assert "1 recording(s) failed and await the retry schedule" in " ".join(advice(observed))
    # The retry (its own run, the small-batch preset) embeds it: nothing is FAILED any more.
    fake_openai.fail_requests(set(), Fault(500))
    from embed_assets.definitions import defs

    retry = defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance, partition_key=failed[0], raise_on_error=False
    )
    assert retry.success
    assert statuses(instance, keys) == dict.fromkeys(keys, DONE)


def test_a_range_run_with_a_member_deleted_before_it_runs_materializes_the_others(
    conn: psycopg.Connection, instance: dg.DagsterInstance, fake_openai: FakeOpenAI
) -> None:
    """Issue 34: deleted between the run's request and its execution (the range's first member and one inside it):
    they are removed (no failure, no error row, their rows gone), the others chunk, embed and materialize."""
    keys = load(conn, instance, 20)
    gone = [keys[0], keys[9]]
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = ANY(%s)", (gone,))
    result = run_range(instance, keys)
    assert result.success
    assert FAILED not in statuses(instance, keys).values()
    assert all(statuses(instance, [k])[k] == DONE for k in keys if k not in gone)
    assert conn.execute("SELECT count(*) FROM embed_assets.recording_errors").fetchone()[0] == 0
    assert (
        conn.execute(
            "SELECT count(*) FROM embed_assets.chunk_vectors WHERE recording_id = ANY(%s)", (gone,)
        ).fetchone()[0]
        == 0
    )
    assert db_status(conn, MODEL).embedded_current == 18
    assert any(f"{keys[9]}: removed" in r.user_message for r in instance.all_logs(result.run_id))
    assert isinstance(retry_requests(instance), dg.SkipReason)


def test_a_provider_4xx_mid_run_fails_the_step_at_once_and_keeps_what_was_written(
    conn: psycopg.Connection, instance: dg.DagsterInstance, fake_openai: FakeOpenAI
) -> None:
    """A 400 is fatal (the step fails at once, no step retry), yet the recordings written before it are
    MATERIALIZED; the one it failed and those never reached are FAILED."""
    keys = load(conn, instance, 20)
    fake_openai.fail_requests({3}, Fault(400, body={"error": {"message": "input rejected", "type": "invalid"}}))
    result = run_range(instance, keys, {"embed_batch_size": 16})
    assert not result.success
    assert not any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)  # the 400 is not retried
    written = {r[0] for r in conn.execute("SELECT recording_id FROM embed_assets.embedded_recordings").fetchall()}
    by_status = statuses(instance, keys)
    assert 0 < len(written) < 20
    assert {k for k, s in by_status.items() if s == DONE} == written
    assert {k for k, s in by_status.items() if s == FAILED} == set(keys) - written
