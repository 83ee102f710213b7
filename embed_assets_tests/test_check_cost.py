"""The completion check's per-run cost (issue 33 item 10): it runs after every run, so what it reads must not
grow with the corpus. Counted, not timed: SQL statements and the rows they return, and the partition keys
listed from Dagster or asked for their status. The seconds are `make bench`'s (group check)."""

from __future__ import annotations

import dagster as dg
import psycopg

from embed_assets.defs.checks import completion_rate
from embed_assets.defs.health import EMBEDDINGS
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets_tests.support.counting import Reads, counting_reads


def corpus(conn: psycopg.Connection, instance: dg.DagsterInstance, n: int) -> list[str]:
    """``n`` recordings, all embedded by the active model and registered; Dagster's status cache built."""
    keys = [f"cost-{i:05d}" for i in range(n)]
    embedded(conn, keys)
    instance.add_dynamic_partitions(recordings_partitions.name, keys)
    for k in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization(EMBEDDINGS, partition=k))
    instance.get_status_by_partition(EMBEDDINGS, keys, recordings_partitions)  # as the UI or the retry schedule
    return keys


def embedded(conn: psycopg.Connection, keys: list[str]) -> None:
    model = conn.execute("SELECT model FROM embed_assets.models").fetchone()[0]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, %s, 1)",
            [(k, f"h{k}") for k in keys],
        )
        cur.executemany(
            """INSERT INTO embed_assets.embedded_recordings (recording_id, model, source_hash, chunk_count)
               VALUES (%s, %s, %s, 1)""",
            [(k, model, f"h{k}") for k in keys],
        )


def check_after_one_run(conn: psycopg.Connection, instance: dg.DagsterInstance, n: int) -> Reads:
    """A new recording is registered (the sensor), one run embeds it, then the completion check runs."""
    key = "cost-new"
    embedded(conn, [key])
    instance.add_dynamic_partitions(recordings_partitions.name, [key])
    instance.report_runless_asset_event(dg.AssetMaterialization(EMBEDDINGS, partition=key))
    ctx = dg.build_asset_check_context(instance=instance)
    with counting_reads() as reads:
        result = completion_rate(ctx, store=VectorStoreResource(), embedder=EmbedderResource())
    md = {k: v.value for k, v in result.metadata.items()}
    assert (md["recordings"], md["embedded"], md["failed"]) == (n + 1, n + 1, 0)
    return reads


def test_the_completion_check_after_a_one_recording_run_reads_as_much_at_400_partitions_as_at_40(
    conn, fake_openai
) -> None:
    reads = {}
    for n in (40, 400):
        conn.execute("TRUNCATE embed_assets.recordings CASCADE")
        with dg.instance_for_test() as instance:
            corpus(conn, instance, n)
            reads[n] = check_after_one_run(conn, instance, n)
    small, large = reads[40], reads[400]
    assert large.dagster_keys == small.dagster_keys, (small.line(), large.line())
    assert large.rows == small.rows, (small.line(), large.line())
    assert large.statements == small.statements, (small.line(), large.line())
