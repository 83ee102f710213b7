"""The completion check's per-run cost at N partitions (issue 33 item 10): `completion_rate` as it runs after a
one-recording run, over a corpus of N recordings, all embedded but ``failed`` of them FAILED in Dagster.

Setup (synthetic, minutes at 1,000,000): recordings and embedded_recordings by COPY, N dynamic partitions on a
throwaway Dagster instance, one real materialization event, then Dagster's asset status cache written as the
corpus's history would have left it (every partition materialized, ``failed`` FAILED). No vectors (the vector
counts read an empty table) and no retry runs. Prints seconds, SQL statements, rows returned to Python and the
partition keys listed from / asked of Dagster.

python -m embed_assets_tests.bench --only check [--check-partitions 100000,1000000] (also in `make bench`, at 100,000)
"""

from __future__ import annotations

import time

import dagster as dg
import psycopg
from dagster._core.storage.partition_status_cache import AssetStatusCacheValue

from embed_assets.defs.checks import completion_rate
from embed_assets.defs.health import EMBEDDINGS
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.db.migrations import migrate
from embed_assets_tests.bench.report import Figure, Report, environment
from embed_assets_tests.support.counting import counting_reads


def _copy(conn: psycopg.Connection, statement: str, lines: list[str]) -> None:
    with conn.cursor().copy(statement) as copy:
        for lo in range(0, len(lines), 100_000):
            copy.write("".join(lines[lo : lo + 100_000]))


def seed_corpus(url: str, n: int, failed: int, instance: dg.DagsterInstance, progress) -> list[str]:
    keys = [f"scale-{i:07d}" for i in range(n)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, 384)
        _copy(
            conn,
            "COPY embed_assets.recordings (recording_id, content_hash, segment_count) FROM STDIN",
            [f"{k}\thash{i}\t1\n" for i, k in enumerate(keys)],
        )
        model = EmbedderResource().spec().model_id
        _copy(
            conn,
            "COPY embed_assets.embedded_recordings (recording_id, model, source_hash, chunk_count) FROM STDIN",
            [f"{k}\t{model}\thash{i}\t1\n" for i, k in enumerate(keys) if i >= failed],
        )
        conn.execute("ANALYZE embed_assets.recordings")
        conn.execute("ANALYZE embed_assets.embedded_recordings")
    progress(f"{n:,} recordings in the store")
    for lo in range(0, n, 20_000):
        instance.add_dynamic_partitions(recordings_partitions.name, keys[lo : lo + 20_000])
    progress(f"{n:,} partitions registered")
    instance.report_runless_asset_event(dg.AssetMaterialization(EMBEDDINGS, partition=keys[-1]))
    record = next(iter(instance.get_asset_records([EMBEDDINGS])))
    empty = recordings_partitions.empty_subset()
    instance.update_asset_cached_status_data(
        EMBEDDINGS,
        AssetStatusCacheValue(
            latest_storage_id=record.asset_entry.last_materialization_storage_id,
            partitions_def_id=instance.get_dynamic_partitions_definition_id(recordings_partitions.name),
            serialized_materialized_partition_subset=empty.with_partition_keys(keys[failed:]).serialize(),
            serialized_failed_partition_subset=empty.with_partition_keys(keys[:failed]).serialize(),
            serialized_in_progress_partition_subset=empty.serialize(),
        ),
    )
    return keys


def completion_check_cost(url: str, n: int, report: Report, progress, failed: int = 10) -> None:
    with environment(EMBED_DATABASE_URL=url), dg.instance_for_test() as instance:
        started = time.perf_counter()
        keys = seed_corpus(url, n, failed, instance, progress)
        progress(f"setup {time.perf_counter() - started:.0f} s")
        assert instance.get_status_by_partition(EMBEDDINGS, keys[: failed + 1], recordings_partitions) == {
            **{k: dg.AssetPartitionStatus.FAILED for k in keys[:failed]},
            keys[failed]: dg.AssetPartitionStatus.MATERIALIZED,
        }
        ctx = dg.build_asset_check_context(instance=instance)
        store, embedder = VectorStoreResource(), EmbedderResource()
        times = []
        for _ in range(2):  # the first also refreshes Dagster's status cache
            with counting_reads() as reads:
                started = time.perf_counter()
                result = completion_rate(ctx, store=store, embedder=embedder)
                times.append(time.perf_counter() - started)
        md = {k: v.value for k, v in result.metadata.items()}
        assert (md["recordings"], md["embedded"], md["failed"]) == (n, n - failed, failed), md
        progress(f"completion_rate at {n:,}: {min(times):.2f} s; {reads.line()}")
        report.add(Figure(f"completion_check_{n}", min(times), "s"))
        report.add(Figure(f"completion_check_statements_{n}", reads.statements, "statements"))
        report.add(Figure(f"completion_check_rows_{n}", reads.rows, "rows"))
        report.add(Figure(f"completion_check_dagster_keys_{n}", reads.dagster_keys, "keys"))
