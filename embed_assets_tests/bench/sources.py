"""Figure group `sources`: the sensor's pass over a user's own tables (EMBED_SOURCE) at the seed's scale.

A Fathom-shaped database of N calls (default 7,000; transcripts as JSON text of ~40 turns, ~14 KB each) read
through a source file, on a throwaway Dagster instance: the first tick (every recording registered: ids,
metadata and hashes), an idle tick (nothing changed: the id scan and an empty cursor query), a tick after 50
transcripts changed, and a forced full hash reconcile. Floors: the source server's own cost of the same
facts in one plain query (ids and sha256 of every transcript; the id scan alone for the idle tick), and
Dagster's sensor evaluation timeout (60 s) as the bound a tick must stay under.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import psycopg

from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.sensors import new_recordings_sensor
from embed_assets.lib.db.migrations import migrate
from embed_assets_tests.bench.report import Figure, Report, environment

SOURCE = """
name: bench
database_url: ${EMBED_BENCH_SOURCE_URL}
recordings: SELECT id AS recording_id, title, started_at, updated_at FROM fathom_calls
transcripts:
  query: SELECT call_id AS recording_id, transcript FROM fathom_transcripts
  fields: {speaker: speaker.display_name, start_s: timestamp}
"""


def _transcript(call: int, variant: int = 0) -> str:
    turns = [
        {"speaker": {"display_name": f"S{i % 3}"}, "timestamp": f"00:{i // 60:02d}:{i % 60:02d}",
         "text": f"call {call} v{variant} turn {i}: we reviewed pricing, the rollout and the security review. " * 3}
        for i in range(40)
    ]  # fmt: skip
    return json.dumps(turns)


def source_sync(url: str, n: int, report: Report, progress, work: Path) -> None:
    source_url = _source_database(url, n, progress)
    (work / "source.yaml").write_text(SOURCE)
    with environment(
        EMBED_SENSOR_SETTLE_S="0",
        EMBED_DATABASE_URL=url,
        EMBED_SOURCE=str(work / "source.yaml"),
        EMBED_BENCH_SOURCE_URL=source_url,
        EMBED_SENSOR_RECONCILE_S="1000000",
        EMBED_SENSOR_MAX_RUNS="50",
    ):
        _measure(url, source_url, n, report, progress)


def _source_database(url: str, n: int, progress) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS embed_bench_source WITH (FORCE)")
        conn.execute("CREATE DATABASE embed_bench_source")
    source_url = url.replace("/embed_bench?", "/embed_bench_source?")
    with psycopg.connect(source_url, autocommit=True) as c:
        c.execute("CREATE TABLE fathom_calls (id bigint PRIMARY KEY, title text, started_at timestamptz, "
                  "updated_at timestamptz NOT NULL DEFAULT clock_timestamp())")  # fmt: skip
        c.execute("CREATE INDEX ON fathom_calls (updated_at, id)")
        c.execute("CREATE TABLE fathom_transcripts (call_id bigint PRIMARY KEY, transcript text)")
        progress(f"sources: writing {n} Fathom-shaped calls")
        with c.cursor().copy("COPY fathom_calls (id, title, started_at) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((i, f"Call {i}", "2026-01-01T00:00:00Z"))
        with c.cursor().copy("COPY fathom_transcripts FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((i, _transcript(i)))
        c.execute("ANALYZE")
    return source_url


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _measure(url: str, source_url: str, n: int, report: Report, progress) -> None:
    from embed_assets.lib.settings import automation_settings
    from embed_assets.lib.sources.sync import sync_source

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, 384)
    store = VectorStoreResource()
    with psycopg.connect(source_url, autocommit=True) as c:
        floor_all, _ = _timed(
            lambda: c.execute(
                "SELECT c.id, c.title, c.updated_at, encode(sha256(convert_to(t.transcript, 'UTF8')), 'hex') "
                "FROM fathom_calls c LEFT JOIN fathom_transcripts t ON t.call_id = c.id"
            ).fetchall()
        )
        floor_ids, _ = _timed(lambda: c.execute("SELECT id::text FROM fathom_calls").fetchall())
    settings = automation_settings()
    source = store.source()
    assert source is not None

    def sync(state: dict) -> tuple[float, dict]:
        with source.connect() as sc, store.connect() as conn:
            seconds, (new_state, _) = _timed(
                lambda: sync_source(
                    source, sc, conn, state, settle_s=0, scan_limit=settings.scan_limit,
                    reconcile_every_s=settings.reconcile_every_s,
                )
            )  # fmt: skip
        return seconds, new_state

    progress(f"sources: first pass over {n} calls")
    first, state = sync({})
    idle, state = sync(state)
    with psycopg.connect(source_url, autocommit=True) as c:
        for i in range(0, 50 * (n // 50), n // 50):
            c.execute("UPDATE fathom_transcripts SET transcript = %s WHERE call_id = %s", (_transcript(i, 1), i))
            c.execute("UPDATE fathom_calls SET updated_at = clock_timestamp() WHERE id = %s", (i,))
    changed, state = sync(state)
    reconcile, _ = sync({k: v for k, v in state.items() if k != "reconciled"})
    with dg.instance_for_test() as instance:  # the whole first sensor tick: registry, partitions, run requests
        ctx = dg.build_sensor_context(instance=instance, resources={"store": store, "embedder": EmbedderResource()})
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE embed_assets.recordings CASCADE")
        tick, result = _timed(lambda: new_recordings_sensor(ctx))
        added = sum(len(r.partition_keys) for r in result.dynamic_partitions_requests or [])
        assert added == n, added
    note = f"{n} calls, {n * len(_transcript(0)) / 1e6:.0f} MB of transcripts"
    report.add(Figure(f"source_first_pass_{n}", first, "s", floor_all, "one query of ids and hashes", note=note))
    report.add(Figure(f"source_idle_pass_{n}", idle, "s", floor_ids, "the id scan alone"))
    report.add(Figure(f"source_pass_50_changed_{n}", changed, "s", floor_ids, "the id scan alone"))
    report.add(Figure(f"source_full_reconcile_{n}", reconcile, "s", floor_all, "one query of ids and hashes"))
    report.add(Figure(f"source_first_sensor_tick_{n}", tick, "s", 60.0, "Dagster's sensor timeout"))
