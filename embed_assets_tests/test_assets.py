"""The assets and job through real Dagster runs (in-process executor, real instance), the real embedded
Postgres, and the real openai client against the loopback server."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from embed_assets.definitions import defs
from embed_assets.defs.config import SMALL_BATCH, load_preset
from embed_assets.lib.sample import sample_transcripts
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.openai_server import FakeOpenAI, Fault

FAST = {"ops": {"chunk_embeddings": {"config": {"backoff_base_s": 0.01, "step_retry_delay_s": 0.1}}}}
CHUNKS = dg.AssetKey("transcript_chunks")
EMBEDDINGS = dg.AssetKey("chunk_embeddings")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def load(conn: psycopg.Connection, instance: dg.DagsterInstance, transcripts: list[Transcript]) -> list[str]:
    for t in transcripts:
        upsert_transcript(conn, t)
    ids = [t.recording_id for t in transcripts]
    instance.add_dynamic_partitions("recordings", ids)
    return ids


def short(rid: str, n: int = 12, extra: str = "") -> Transcript:
    return Transcript(
        rid,
        tuple(Segment(f"S{i % 2}", f"{extra} turn {i} " + "we discussed the renewal terms " * 4) for i in range(n)),
    )


def run(instance: dg.DagsterInstance, key: str | None = None, config: dict | None = None, tags: dict | None = None):
    job = defs.resolve_job_def("embed_recordings")
    return job.execute_in_process(
        instance=instance, partition_key=key, run_config=config or FAST, tags=tags, raise_on_error=False
    )


def check_result(instance: dg.DagsterInstance, name: str):
    key = dg.AssetCheckKey(CHUNKS if name == "embedding_config_valid" else EMBEDDINGS, name)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    return record.event.dagster_event.event_specific_data if record and record.event else None


def counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM embed_assets.chunks), (SELECT count(*) FROM embed_assets.chunk_vectors),"
        " (SELECT count(*) FROM embed_assets.transcript_chunks WHERE embedding IS NOT NULL)"
    ).fetchone()


def test_one_partition_end_to_end_then_zero_requests_on_rerun(conn, instance, fake_openai: FakeOpenAI) -> None:
    (rid,) = load(conn, instance, [short("rec-a")])
    result = run(instance, rid)
    assert result.success
    n = counts(conn)[0]
    assert n > 1 and counts(conn) == (n, n, n)
    assert fake_openai.seen.inputs == n
    md = result.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert md["embedded"].value == n and md["provider_requests"].value == fake_openai.seen.requests
    assert md["tokens"].value == fake_openai.seen.tokens and md["estimated_cost_usd"].value > 0
    assert md["model"].value == "text-embedding-3-small@384" and md["dimension"].value == 384
    assert check_result(instance, "embedding_config_valid").passed

    requests = fake_openai.seen.requests
    again = run(instance, rid)
    assert again.success and fake_openai.seen.requests == requests  # never pay twice
    md = again.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert md["embedded"].value == 0 and md["cache_hits"].value == n and md["vectors_written"].value == 0
    status = instance.get_status_by_partition(EMBEDDINGS, [rid], defs.resolve_assets_def(EMBEDDINGS).partitions_def)
    assert status == {rid: dg.AssetPartitionStatus.MATERIALIZED}


def test_a_backfill_range_runs_many_partitions_in_one_run(conn, instance, fake_openai: FakeOpenAI) -> None:
    ids = load(conn, instance, [short(f"rec-{i}", extra=str(i)) for i in range(5)])
    result = run(
        instance,
        tags={"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]},
    )
    assert result.success
    n = counts(conn)[0]
    assert counts(conn) == (n, n, n)
    assert conn.execute("SELECT count(*) FROM embed_assets.embedded_recordings").fetchone()[0] == 5
    status = instance.get_status_by_partition(EMBEDDINGS, ids, defs.resolve_assets_def(EMBEDDINGS).partitions_def)
    assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}
    assert len(instance.get_runs()) == 1
    # five short calls share one provider request, and the metadata says what the provider saw
    assert fake_openai.seen.requests == 1 and fake_openai.seen.inputs == n
    mats = result.asset_materializations_for_node("chunk_embeddings")
    md = mats[0].metadata
    assert md["provider_requests"].value == 1 and md["embedded"].value == n
    assert md["tokens"].value == fake_openai.seen.tokens
    # Each partition's event carries the step's totals, and nothing that grows with the run: a table of every
    # recording on every partition's event made Dagster serialize and store O(recordings^2) per run.
    assert sorted(m.partition for m in mats) == ids
    for m in mats + result.asset_materializations_for_node("transcript_chunks"):
        others = [i for i in ids if i != m.partition and i in repr(m.metadata)]
        assert not others, f"{m.partition}'s event names other recordings: {others}"


def test_missing_key_fails_the_first_step_with_zero_requests(conn, instance, fake_openai, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    (rid,) = load(conn, instance, [short("rec-a")])
    result = run(instance, rid)
    assert not result.success
    check = check_result(instance, "embedding_config_valid")
    assert not check.passed and "OPENAI_API_KEY is not set" in check.description
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert not result.asset_materializations_for_node("chunk_embeddings")  # blocked: never started
    assert fake_openai.seen.requests == 0 and counts(conn)[1] == 0


def test_wrong_key_fails_at_once_without_step_retries(conn, instance, fake_openai, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-0000000000000000")
    (rid,) = load(conn, instance, [short("rec-a")])
    result = run(instance, rid)
    assert not result.success and fake_openai.seen.requests == 1
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "OPENAI_API_KEY" in failure.step_failure_data.error.message
    assert not any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)
    assert counts(conn)[1] == 0


def test_live_probe_catches_a_wrong_key_in_the_config_check(conn, instance, fake_openai, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-0000000000000000")
    monkeypatch.setenv("EMBED_PROBE", "1")
    (rid,) = load(conn, instance, [short("rec-a")])
    assert not run(instance, rid).success
    check = check_result(instance, "embedding_config_valid")
    assert not check.passed and "live probe failed" in check.description and "OPENAI_API_KEY" in check.description
    assert fake_openai.seen.requests == 1  # the probe only


def test_model_dimension_mismatch_blocks_embedding(conn, instance, fake_openai) -> None:
    """A model's table constrained to another dimension than the model makes (a hand-made change) is really
    inconsistent: the blocking check stops the run before any request, naming the commands that fix it."""
    (table,) = conn.execute("SELECT vectors FROM embed_assets.models").fetchone()
    conn.execute(f"ALTER TABLE embed_assets.{table} DROP CONSTRAINT {table}_dimension")
    conn.execute(
        f"ALTER TABLE embed_assets.{table} ADD CONSTRAINT {table}_dimension CHECK (vector_dims(embedding) = 1536)"
    )
    (rid,) = load(conn, instance, [short("rec-a")])
    assert not run(instance, rid).success
    check = check_result(instance, "embedding_config_valid")
    assert not check.passed and "makes 384-dim vectors but its table" in check.description
    assert "embed-assets model drop text-embedding-3-small@384" in check.description
    assert fake_openai.seen.requests == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault(429, headers={"retry-after": "0.01"}),
        Fault(500),
        Fault(503),
        Fault(200, delay_s=0.6),  # past the 0.3 s request timeout
        Fault(drop=True),
        Fault(200, raw=b'{"data": [tru'),
    ],
    ids=["429", "500", "503", "timeout", "dropped", "malformed-json"],
)
def test_transient_faults_on_a_fifth_of_requests_lose_nothing(conn, instance, fake_openai, fault: Fault) -> None:
    fake_openai.fault = lambda n: fault if n % 5 == 0 else None
    ids = load(conn, instance, [short(f"rec-{i}", 40, extra=str(i)) for i in range(3)])
    config = {
        "ops": {
            "chunk_embeddings": {"config": {"backoff_base_s": 0.01, "embed_batch_size": 2, "request_timeout_s": 0.3}}
        }
    }
    for rid in ids:
        assert run(instance, rid, config).success
    n = counts(conn)[0]
    assert counts(conn) == (n, n, n)
    failed_requests = fake_openai.seen.requests - fake_openai.seen.ok
    assert fake_openai.seen.inputs == n  # every chunk paid for exactly once
    assert failed_requests <= fake_openai.seen.requests // 5 + 1  # bounded: each fault costs one retry
    print(
        f"fault {fault.status}{' drop' if fault.drop else ''}: {n} chunks, {fake_openai.seen.requests} requests, "
        f"{failed_requests} failed, {n} vectors"
    )


def test_wrong_dimension_from_the_provider_fails_loudly_and_writes_nothing(conn, instance, fake_openai) -> None:
    fake_openai.fault = lambda n: Fault(dimension=512)
    (rid,) = load(conn, instance, [short("rec-a")])
    result = run(instance, rid)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "returned 512-dim vectors" in message and fake_openai.seen.requests == 1
    assert counts(conn)[1] == 0


def test_statement_timeout_fails_without_retries_and_small_batch_recovers(conn, instance, fake_openai) -> None:
    (rid,) = load(conn, instance, [short("rec-big", 300)])
    tight = {
        "ops": {
            "chunk_embeddings": {
                "config": {"statement_timeout_s": 0.001, "insert_batch_size": 1000, "adaptive_batches": False}
            }
        }
    }
    failed = run(instance, rid, tight)
    assert not failed.success
    message = next(e for e in failed.all_events if e.is_step_failure).step_failure_data.error.message
    assert "statement timeout" in message and "small-batch" in message
    assert not any(e.event_type_value == "STEP_RESTARTED" for e in failed.all_events)
    assert counts(conn)[1] == 0
    paid = fake_openai.seen.inputs
    recovered = run(instance, rid, SMALL_BATCH)
    assert recovered.success
    n = counts(conn)[0]
    assert counts(conn) == (n, n, n)
    md = recovered.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert md["insert_statements"].value == -(-n // 5)
    assert fake_openai.seen.inputs == paid  # the failed write's vectors were kept before it: nothing re-bought


@pytest.fixture
def slow_vector_index(conn: psycopg.Connection) -> Iterator[None]:
    """Every vector row costs the server at least 4 ms (a row trigger sleeping in Postgres): a slow index,
    deterministically, where a real one's latency depends on its size and the machine's load."""
    conn.execute(
        """CREATE FUNCTION embed_assets.slow_row() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN PERFORM pg_sleep(0.004); RETURN NEW; END $$"""
    )
    conn.execute(
        "CREATE TRIGGER slow_row BEFORE INSERT ON embed_assets.chunk_vectors "
        "FOR EACH ROW EXECUTE FUNCTION embed_assets.slow_row()"
    )
    try:
        yield
    finally:
        conn.execute("DROP TRIGGER slow_row ON embed_assets.chunk_vectors")
        conn.execute("DROP FUNCTION embed_assets.slow_row()")


def test_a_long_recording_too_slow_for_the_normal_batch_succeeds_first_time_in_smaller_batches(
    conn, instance, fake_openai, slow_vector_index
) -> None:
    control, rid = load(conn, instance, [short("control", 700), short("rec-long", 700, extra="other")])
    # 100 rows take >= 0.4 s against a 0.2 s statement timeout: the normal batch times out, by construction.
    config = {"ops": {"chunk_embeddings": {"config": {"statement_timeout_s": 0.2, "insert_batch_size": 100}}}}
    off = {
        "ops": {
            "chunk_embeddings": {"config": {**config["ops"]["chunk_embeddings"]["config"], "adaptive_batches": False}}
        }
    }
    assert not run(instance, control, off).success  # the control: without adapting, it fails

    result = run(instance, rid, config)  # adaptive batches are the default
    assert result.success
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": rid}))
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS  # the first attempt, no failed run
    md = result.asset_materializations_for_node("chunk_embeddings")[0].metadata
    n = md["chunks"].value
    assert n > 100 and md["vectors_written"].value == n
    reason = md["adapted_recordings"].value[rid]
    assert "statement timeout" in reason and "configured 100" in reason
    assert md["insert_statements"].value > -(-n // 100)  # smaller statements than configured
    assert (
        conn.execute("SELECT count(*) FROM embed_assets.chunk_vectors WHERE recording_id = %s", (rid,)).fetchone()[0]
        == n
    )


def test_a_three_hour_call_writes_under_a_30s_statement_timeout(conn, instance, fake_openai) -> None:
    long_call = sample_transcripts(2)[1]
    (rid,) = load(conn, instance, [long_call])
    result = run(instance, rid)  # default config: statement_timeout_s = 30
    assert result.success
    md = result.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert md["chunks"].value >= 1000 and md["vectors_written"].value == md["chunks"].value
    print(f"1,000+ chunk write: {md['chunks'].value} vectors in {md['write_seconds'].value}s")


def test_small_batch_yaml_equals_the_python_preset() -> None:
    assert load_preset() == SMALL_BATCH
    defs.resolve_job_def("embed_recordings")  # and it is valid run config for the job:
    from dagster._core.definitions.run_config import RunConfig  # noqa: F401

    assert dg.validate_run_config(defs.resolve_job_def("embed_recordings"), SMALL_BATCH)


def test_the_small_batch_preset_is_selectable_by_name(conn, instance, fake_openai) -> None:
    (rid,) = load(conn, instance, [short("rec-a", 40)])
    result = run(instance, rid, {"ops": {"chunk_embeddings": {"config": {"preset": "small_batch"}}}})
    assert result.success
    md = result.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert md["insert_statements"].value == -(-md["chunks"].value // 5)
    assert max(fake_openai.seen.batch_sizes) <= 16
