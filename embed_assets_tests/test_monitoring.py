"""Health on a clock: the pipeline_health asset's numbers equal the database's, and the schedule asks for a run
every tick whether or not embedding runs happen."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from embed_assets.defs.monitoring import evaluate_health, health_cron, pipeline_health
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.pipeline import chunk_recording, embed_recording
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.test_store import PARAMS, SPEC, HashEmbedder, transcript


def test_health_numbers_equal_the_database(conn: psycopg.Connection, fake_openai, monkeypatch) -> None:
    monkeypatch.setenv("EMBED_HEALTH_IN_FLIGHT_S", "0")  # h3, pending, counts at once (no in-flight grace)
    for rid in ("h1", "h2", "h3"):
        upsert_transcript(conn, transcript(rid, 30, variant=rid))
    for rid in ("h1", "h2"):  # h3 stays pending
        chunk_recording(conn, rid, SPEC, PARAMS)
        embed_recording(conn, rid, HashEmbedder(), insert_batch_size=50, statement_timeout_ms=30_000)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("recordings", ["h1", "h2", "h3"])
        result = dg.materialize(
            [pipeline_health],
            instance=instance,
            resources={"store": VectorStoreResource(), "embedder": EmbedderResource()},
        )
        assert result.success
        (event,) = result.asset_materializations_for_node("pipeline_health")
        md = {k: v.value for k, v in event.metadata.items()}
    # What the provider billed: each distinct text once (h2 shares most of h1's turns, and those are copies).
    vectors, tokens = conn.execute(
        """SELECT count(*), sum(token_count) FROM (SELECT DISTINCT c.content_hash, c.token_count
           FROM embed_assets.chunk_vectors v
           JOIN embed_assets.chunks c USING (recording_id, model, chunk_index, content_hash)) billed"""
    ).fetchone()
    assert (md["recordings"], md["pending"], md["failed"], md["dead_lettered"]) == (3, 1, 0, 0)
    assert md["completion_pct"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert (md["vectors_last_hour"], md["tokens_last_hour"]) == (vectors, tokens)
    assert md["estimated_cost_usd_per_day"] == pytest.approx(tokens * 0.02 / 1e6, abs=1e-6)
    assert md["oldest_pending_minutes"] >= 0 and md["verdict"] == "warning"  # 67% < 99%, but embedding is recent
    assert md["model"] == SPEC.model_id
    assert md["unreadable_source_rows"] == 0 and md["source"].startswith("project tables")


def test_the_schedule_asks_for_a_run_every_tick_and_its_cron_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    with dg.instance_for_test() as instance:
        when = datetime(2026, 11, 25, 1, 5, tzinfo=UTC)
        request = evaluate_health(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
        assert isinstance(request, dg.RunRequest) and request.run_key == "health-20261125T0105"
    monkeypatch.setenv("EMBED_HEALTH_CRON", "every five minutes")
    with pytest.raises(ConfigError, match="EMBED_HEALTH_CRON"):
        health_cron()
