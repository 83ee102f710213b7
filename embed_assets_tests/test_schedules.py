"""retry_failed_recordings end to end on a real instance: failed partitions only, the small-batch config,
dead-letter after the bound, recovery by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from embed_assets.definitions import defs
from embed_assets.defs.config import SMALL_BATCH
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets_tests.support.openai_server import FakeOpenAI, Fault
from embed_assets_tests.test_assets import counts, load, short

# A write that times out whatever the batch (1 ms), with adaptive batches off so it is the normal batch's
# statement that fails, deterministically: what the retry schedule exists for.
TIGHT = {
    "ops": {
        "chunk_embeddings": {
            "config": {"statement_timeout_s": 0.001, "insert_batch_size": 1000, "adaptive_batches": False}
        }
    }
}
RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def evaluate(instance: dg.DagsterInstance):
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC), resources=RESOURCES)
    return retry_failed_recordings(ctx)


def execute(instance: dg.DagsterInstance, key: str, config: dict, tags: dict | None = None) -> bool:
    job = defs.resolve_job_def("embed_recordings")
    return job.execute_in_process(
        instance=instance, partition_key=key, run_config=config, tags=tags, raise_on_error=False
    ).success


def test_statement_timeout_is_recovered_by_the_small_batch_retry(
    conn: psycopg.Connection, instance: dg.DagsterInstance, fake_openai: FakeOpenAI
) -> None:
    good, big = load(conn, instance, [short("ok"), short("big", 300)])
    assert execute(instance, good, {})
    assert not execute(instance, big, TIGHT)  # the normal run times out writing vectors

    requests = evaluate(instance)
    assert [r.partition_key for r in requests] == ["big"]  # only the failed partition
    (req,) = requests
    assert req.run_config == SMALL_BATCH and req.tags["embed_assets/trigger"] == "retry"
    assert req.run_key.startswith("retry:big:") and req.run_key.endswith(":1")

    assert execute(instance, big, req.run_config, req.tags)
    n = counts(conn)[0]
    assert counts(conn) == (n, n, n)
    assert isinstance(evaluate(instance), dg.SkipReason)  # nothing failed any more
    assert conn.execute("SELECT count(*) FROM embed_assets.recording_errors").fetchone()[0] == 0


def test_dead_letter_after_the_bound_then_recovery_by_hand(
    conn: psycopg.Connection, instance: dg.DagsterInstance, fake_openai: FakeOpenAI, monkeypatch
) -> None:
    monkeypatch.setenv("EMBED_SMALL_BATCH_ATTEMPTS", "2")
    fake_openai.fault = lambda n: Fault(400, body={"error": {"message": "input rejected"}})
    (key,) = load(conn, instance, [short("bad")])
    assert not execute(instance, key, {})
    for attempt in (1, 2):
        (req,) = evaluate(instance)
        assert req.run_key.endswith(f":{attempt}")
        assert not execute(instance, key, req.run_config, req.tags)
    skip = evaluate(instance)
    assert isinstance(skip, dg.SkipReason) and "1 dead-lettered" in skip.skip_message

    from embed_assets.defs.checks import pipeline_health

    health = pipeline_health(instance, VectorStoreResource(), "text-embedding-3-small@384")
    assert health["dead_lettered"] == ["bad"] and "input rejected" in health["errors"]["bad"]["error"]
    assert health["errors"]["bad"]["failures"] == 3

    fake_openai.fault = lambda n: None  # the provider is fixed; an operator relaunches by hand
    assert execute(instance, key, SMALL_BATCH)
    health = pipeline_health(instance, VectorStoreResource(), "text-embedding-3-small@384")
    assert health["dead_lettered"] == [] and health["failed"] == [] and health["verdict"] == "healthy"


def test_retry_cron_from_the_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from embed_assets.defs.schedules import DEFAULT_RETRY_CRON, retry_cron
    from embed_assets.lib.errors import ConfigError

    assert retry_cron() == DEFAULT_RETRY_CRON
    monkeypatch.setenv("EMBED_RETRY_CRON", "0 3 * * *")
    assert retry_cron() == "0 3 * * *"
    monkeypatch.setenv("EMBED_RETRY_CRON", "every 15 minutes")
    with pytest.raises(ConfigError, match="EMBED_RETRY_CRON='every 15 minutes' is not a cron expression"):
        retry_cron()
