"""Issue 7, partition scale: the Dagster UI and its GraphQL over N recordings (synthetic partitions; a
up to 1,000 of them materialized and 10 failed), on `dagster dev` with the project's instance config.

Figures: the partition status query the partitions page issues (keys + statuses of chunk_embeddings) and
the page itself in headless Chromium, from navigation to the status counts on screen. Printed, not
asserted: the README's "Partition scale" section quotes them.
"""

from __future__ import annotations

import io
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from embed_assets.lib.db.migrations import migrate
from embed_assets_tests.bench.report import Figure, Report, environment
from embed_assets_tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from embed_assets_tests.support.dagster_dev import DagsterDev, fresh_database, make_home

STATUS_QUERY = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionKeysByDimension { name partitionKeys }
  assetPartitionStatuses { __typename ... on DefaultPartitionStatuses {
    materializedPartitions failedPartitions materializingPartitions } }
  partitionStats { numMaterialized numPartitions numFailed } } } }"""
MATERIALIZED, FAILED = 1_000, 10


def _materialized(n: int) -> int:
    """How many partitions _populate materializes: 1,000, or all but the failed ones on a smaller set."""
    return min(MATERIALIZED, n - FAILED)


def _populate(url: str, home: Path, n: int, progress) -> None:
    import dagster as dg

    keys = [f"scale-{i:07d}" for i in range(n)]
    with psycopg.connect(url, autocommit=True) as conn:  # the source rows, so the sensor keeps the partitions
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, 384)
        buf = "".join(f"{k}\thash{i}\t1\n" for i, k in enumerate(keys))
        with conn.cursor().copy(
            "COPY embed_assets.recordings (recording_id, content_hash, segment_count) FROM STDIN"
        ) as copy:
            copy.write(io.StringIO(buf).getvalue())
    instance = dg.DagsterInstance.from_config(str(home))
    for lo in range(0, n, 10_000):
        instance.add_dynamic_partitions("recordings", keys[lo : lo + 10_000])
    n_mat = _materialized(n)
    for i, key in enumerate(keys[:n_mat]):
        instance.report_runless_asset_event(dg.AssetMaterialization("chunk_embeddings", partition=key))
        if i % 250 == 249:
            progress(f"{i + 1} materializations reported")
    # Failed partitions need failed runs: a stand-in chunk_embeddings whose step raises, one run each.
    failing = _failing_asset()
    for key in keys[n_mat : n_mat + FAILED]:
        dg.materialize([failing], partition_key=key, instance=instance, raise_on_error=False)
    instance.dispose()
    progress(f"{n:,} partitions registered, {n_mat:,} materialized, {FAILED} failed")


def _failing_asset():
    import dagster as dg

    from embed_assets.defs.partitions import recordings_partitions

    @dg.asset(name="chunk_embeddings", partitions_def=recordings_partitions)
    def failing() -> None:
        raise RuntimeError("synthetic failure for the partition-scale bench")

    return failing


def partition_scale(url: str, n: int, report: Report, progress, reps: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        env = {
            "EMBED_DATABASE_URL": url,
            "EMBED_DAGSTER_DATABASE_URL": fresh_database(url, "embed_bench_dagster"),
            "EMBED_HOME": tmp,
            "EMBED_SENSOR_MAX_RUNS": "0",
            "EMBED_RETRY_CRON": "0 3 1 1 *",
        }
        with environment(**env):
            home = make_home(Path(tmp) / "dagster_home")
            _populate(url, home, n, progress)
            with DagsterDev(home, env, Path(tmp) / "dagster-dev.log", progress) as dev:
                times = []
                for _ in range(reps):
                    started = time.perf_counter()
                    data = dev.graphql(STATUS_QUERY, {"key": {"path": ["chunk_embeddings"]}}, timeout_s=600)
                    times.append(time.perf_counter() - started)
                node = data["assetNodeOrError"]
                n_keys = len(node["partitionKeysByDimension"][0]["partitionKeys"])
                stats = node["partitionStats"]
                expected = {"numPartitions": n, "numMaterialized": _materialized(n), "numFailed": FAILED}
                if stats != expected:
                    raise RuntimeError(f"unexpected partition stats {stats}, expected {expected}")
                report.add(
                    Figure(
                        f"ui_graphql_partition_status_{n}",
                        statistics.median(times),
                        "s",
                        note=f"first {times[0]:.2f}s; {n_keys:,} keys",
                    )
                )
                if Path(CHROMIUM).is_file():
                    shot = Path(os.environ.get("BENCH_SHOTS", tmp)) / f"bench-partitions-{n}.png"
                    report.add(
                        Figure(
                            f"ui_partitions_page_{n}",
                            _page_load(dev.url, reps, shot, _materialized(n)),
                            "s",
                            note="navigation -> status counts visible, headless Chromium",
                        )
                    )


def _page_load(base: str, reps: int, shot: Path, materialized: int) -> float:
    from playwright.sync_api import expect, sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(reps):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            started = time.perf_counter()
            page.goto(f"{base}/assets/chunk_embeddings?view=partitions")
            try:
                _wait_for_counts(page, expect, materialized)
            finally:
                page.screenshot(path=str(shot))
            times.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return statistics.median(times)


def _wait_for_counts(page, expect, materialized: int) -> None:
    """Until the status filter shows the materialized and failed counts (grouped digits or not)."""
    count = f"{materialized:,}".replace(",", ",?")
    expect(page.get_by_text(re.compile(rf"Materialized \({count}\)"))).to_be_visible(timeout=300_000)
    expect(page.get_by_text(f"Failed ({FAILED})")).to_be_visible(timeout=300_000)
