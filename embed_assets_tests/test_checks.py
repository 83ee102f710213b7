"""completion_rate and chunk_integrity: passing and failing for the right reason; health thresholds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import dagster as dg
import pytest

from embed_assets.defs.checks import chunk_integrity, completion_rate
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.health.status import DbStatus, Thresholds, verdict
from embed_assets_tests.test_assets import check_result, load, run, short

MODEL = "text-embedding-3-small@384"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def completion(instance: dg.DagsterInstance) -> dg.AssetCheckResult:
    ctx = dg.build_asset_check_context(instance=instance)
    return completion_rate(ctx, store=VectorStoreResource(), embedder=EmbedderResource())


def integrity() -> dg.AssetCheckResult:
    return chunk_integrity(dg.build_asset_check_context(), store=VectorStoreResource(), embedder=EmbedderResource())


def test_completion_rate_counts_match_the_database(conn, instance, fake_openai, monkeypatch) -> None:
    monkeypatch.setenv("EMBED_HEALTH_IN_FLIGHT_S", "0")  # the pending recording counts at once (no grace)
    ids = load(conn, instance, [short(f"r{i}", extra=str(i)) for i in range(4)])
    for rid in ids[:3]:
        assert run(instance, rid).success
    result = completion(instance)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "completion 75.0% < 99%" in result.description
    md = {k: v.value for k, v in result.metadata.items()}
    direct = conn.execute(
        """SELECT count(*), count(e.recording_id) FROM embed_assets.recordings r
           LEFT JOIN embed_assets.embedded_recordings e
             ON e.recording_id = r.recording_id AND e.source_hash = r.content_hash"""
    ).fetchone()
    assert (md["recordings"], md["embedded"], md["never_embedded"]) == (direct[0], direct[1], direct[0] - direct[1])
    assert md["completion_rate"] == pytest.approx(0.75)
    assert run(instance, ids[3]).success
    assert completion(instance).passed


def test_chunk_integrity_passes_then_catches_each_corruption(conn, instance, fake_openai) -> None:
    (rid,) = load(conn, instance, [short("r1", 40)])
    assert run(instance, rid).success
    ok = integrity()
    assert ok.passed and ok.metadata["embedded_recordings"].value == 1

    conn.execute("DELETE FROM embed_assets.chunk_vectors WHERE chunk_index = 1")
    bad = integrity()
    assert not bad.passed and bad.metadata["missing_vectors"].value == 1 and "r1" in bad.description

    conn.execute(
        "UPDATE embed_assets.chunk_vectors SET embedding = array_fill(0, ARRAY[384])::vector WHERE chunk_index = 2"
    )
    assert integrity().metadata["zero_vectors"].value == 1

    conn.execute("UPDATE embed_assets.chunk_vectors SET content_hash = 'stale' WHERE chunk_index = 3")
    assert integrity().metadata["orphan_vectors"].value == 1

    conn.execute("DELETE FROM embed_assets.chunks WHERE chunk_index = 4")
    md = integrity().metadata
    assert md["chunk_count_mismatch"].value == 1


def test_in_a_run_chunk_integrity_checks_the_runs_recordings_only(conn, instance, fake_openai) -> None:
    ids = load(conn, instance, [short(f"r{i}", 20, extra=str(i)) for i in range(4)])
    assert run(instance, ids[0]).success
    conn.execute("DELETE FROM embed_assets.chunk_vectors WHERE recording_id = %s AND chunk_index = 1", (ids[0],))
    tags = {"dagster/asset_partition_range_start": ids[1], "dagster/asset_partition_range_end": ids[3]}
    assert run(instance, None, tags=tags).success  # r0's missing vector is not this run's doing
    md = check_result(instance, "chunk_integrity").metadata
    assert md["scope"].value == "3 recording(s) of this run" and md["embedded_recordings"].value == 3
    whole = integrity()  # launched on its own: every recording, so r0 is caught
    assert not whole.passed and whole.metadata["missing_vectors"].value == 1 and ids[0] in whole.description


def test_coverage_gap_is_reported(conn, instance, fake_openai) -> None:
    (rid,) = load(conn, instance, [short("r1", 40)])
    assert run(instance, rid).success
    conn.execute("UPDATE embed_assets.chunks SET first_seq = last_seq WHERE chunk_index = 3 AND first_seq < last_seq")
    conn.execute(
        "UPDATE embed_assets.chunks SET first_seq = first_seq + 5, last_seq = last_seq + 5 WHERE chunk_index = 2"
    )
    assert integrity().metadata["coverage_gaps"].value == 1


def status(pending: int = 0, done: int = 100, idle_s: float | None = 60.0) -> DbStatus:
    return DbStatus(MODEL, done + pending, done, 0, pending, 0, 0, 0, datetime.now(), idle_s)


@pytest.mark.parametrize(
    ("s", "failed", "dead", "level", "reason"),
    [
        (status(), 0, 0, "healthy", None),
        (status(), 0, 20, "healthy", None),
        (status(), 0, 21, "warning", "21 dead-lettered recordings > 20"),
        (status(), 0, 50, "warning", "50 dead-lettered"),
        (status(), 0, 51, "critical", "51 dead-lettered recordings > 50"),
        (status(pending=1, done=99), 0, 0, "healthy", None),
        (status(pending=2, done=98), 0, 0, "warning", "completion 98.0% < 99%"),
        (status(pending=1, done=200, idle_s=3601), 0, 0, "warning", "nothing was embedded for 60 min"),
        (status(pending=1, done=200, idle_s=6 * 3600 + 1), 0, 0, "critical", "not for 6.0 h"),
        (status(pending=0, done=200, idle_s=10 * 3600), 0, 0, "healthy", None),  # idle but nothing to do
        (status(pending=0, done=200, idle_s=None), 1, 0, "critical", "never"),
    ],
)
def test_health_thresholds(s: DbStatus, failed: int, dead: int, level: str, reason: str | None) -> None:
    got, reasons = verdict(s, failed, dead, Thresholds())
    assert got == level
    if reason:
        assert any(reason in r for r in reasons), reasons
    else:
        assert reasons == []


def test_status_cli_numbers_equal_a_direct_count(conn, instance, fake_openai) -> None:
    from embed_assets.defs.checks import pipeline_health

    ids = load(conn, instance, [short(f"r{i}", extra=str(i)) for i in range(3)])
    assert run(instance, ids[0]).success
    h = pipeline_health(instance, VectorStoreResource(), MODEL)
    db = h["db"]
    assert (db.recordings, db.embedded_current, db.never_embedded) == (3, 1, 2)
    assert db.vectors == conn.execute("SELECT count(*) FROM embed_assets.chunk_vectors").fetchone()[0]
    assert db.chunks == conn.execute("SELECT count(*) FROM embed_assets.chunks").fetchone()[0]
    assert h["partitions"] == 3 and h["failed"] == []
