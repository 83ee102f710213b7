"""Figure 5: one sensor tick, `status` and the failed-partition scan over N recordings (synthetic rows,
not embedded), on a throwaway Dagster instance and the bench database."""

from __future__ import annotations

import io
import time

import dagster as dg
import psycopg

from embed_assets.defs.checks import pipeline_health
from embed_assets.defs.health import failed_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.sensors import new_recordings_sensor
from embed_assets.lib.db.migrations import migrate
from embed_assets_tests.bench.report import Figure, Report, environment

SENSOR_TIMEOUT_S = 60  # Dagster's default sensor evaluation timeout


def sensor_and_status(url: str, n: int, report: Report, progress) -> None:
    with environment(EMBED_SENSOR_SETTLE_S="0", EMBED_DATABASE_URL=url):
        _sensor_and_status(url, n, report, progress)


def _sensor_and_status(url: str, n: int, report: Report, progress) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, 384)
        buf = "".join(f"scale-{i:07d}\thash{i}\t1\n" for i in range(n))
        with conn.cursor().copy(
            "COPY embed_assets.recordings (recording_id, content_hash, segment_count) FROM STDIN"
        ) as copy:
            copy.write(io.StringIO(buf).getvalue())
        conn.execute("ANALYZE embed_assets.recordings")
    resources = {"store": VectorStoreResource(), "embedder": EmbedderResource()}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources=resources)
        started = time.perf_counter()
        first = new_recordings_sensor(ctx)
        first_tick = time.perf_counter() - started
        for req in first.dynamic_partitions_requests:
            keys = list(req.partition_keys)
            for lo in range(0, len(keys), 10_000):
                instance.add_dynamic_partitions(req.partitions_def_name, keys[lo : lo + 10_000])
        progress(f"{n:,} partitions registered")
        cursor = first.cursor
        ticks = []
        for _ in range(3):  # steady state: the cursor walks the backlog, max runs per tick
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            started = time.perf_counter()
            result = new_recordings_sensor(ctx)
            ticks.append(time.perf_counter() - started)
            cursor = result.cursor
        report.add(Figure(f"sensor_first_tick_{n}", first_tick, "s", SENSOR_TIMEOUT_S, "sensor timeout"))
        report.add(Figure(f"sensor_tick_{n}", max(ticks), "s", SENSOR_TIMEOUT_S, "sensor timeout"))
        keys = instance.get_dynamic_partitions("recordings")
        started = time.perf_counter()
        failed_partitions(instance, keys)
        report.add(Figure(f"failed_partitions_{n}", time.perf_counter() - started, "s"))
        started = time.perf_counter()
        pipeline_health(instance, VectorStoreResource(), EmbedderResource().spec().model_id)
        report.add(Figure(f"status_{n}", time.perf_counter() - started, "s"))
