"""The removal guard: a source that reads as empty for a tick (a table reloaded by TRUNCATE + INSERT) removes
nothing; the hold is logged, shown in `status` and the health verdict, lifts by itself when the rows return, and a
real removal goes through only with the token of THAT removal. A second database as the application's, the real
sensor, real Dagster runs, the loopback OpenAI server."""

from __future__ import annotations

import json

import dagster as dg
import psycopg
import pytest

from embed_assets.defs.checks import pipeline_health
from embed_assets.defs.resources import VectorStoreResource
from embed_assets.lib.sources.removal_guard import CONFIRM_VAR, held_removals
from embed_assets.lib.sources.sync import SyncReport
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.support.openai_server import FakeOpenAI
from embed_assets_tests.test_assets import short
from embed_assets_tests.test_sensors import tick
from embed_assets_tests.test_source_tables import (  # noqa: F401 (fixtures)
    JSON_SOURCE,
    MODEL,
    add_call,
    app_db,
    instance,
    run,
    settle,
    turns,
    use_source,
)

CALLS = range(1, 11)


def counts(conn: psycopg.Connection) -> tuple[int, int]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM embed_assets.recordings), (SELECT count(*) FROM embed_assets.chunk_vectors)"
    ).fetchone()


def reload_starts(admin: str) -> None:
    """The application's nightly reload: TRUNCATE, then (later) INSERT everything again."""
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("TRUNCATE fathom_calls CASCADE")


def test_an_empty_source_snapshot_removes_nothing_until_that_removal_is_confirmed(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811 (the fixture imported above)
    use_source,  # noqa: F811
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBED_SOURCE_MAX_REMOVE_FLOOR", "2")  # 10% of 10 is 1: up to 2 removals pass unasked
    admin = use_source(JSON_SOURCE)
    for call in CALLS:
        add_call(admin, call, json.dumps(turns(call)))
    cursor = tick(instance, None).cursor
    keys = [str(c) for c in CALLS]
    assert run(instance, keys).success
    embedded = counts(conn)
    assert embedded[0] == 10 and embedded[1] > 10
    requests = fake_openai.seen.requests

    reload_starts(admin)  # the sensor ticks between the TRUNCATE and the INSERT
    cursor = tick(instance, cursor).cursor
    assert counts(conn) == embedded  # before: every recording, chunk and vector removed
    assert sorted(instance.get_dynamic_partitions("recordings"), key=int) == keys
    (held,) = held_removals(conn)
    assert (held.scope, held.count, held.known) == ("fathom", 10, 10)
    assert held.token in SyncReport(held=held).summary()  # what the sensor logs, as a warning
    health = pipeline_health(instance, VectorStoreResource(), MODEL)
    assert health["verdict"] == "warning"
    assert any(f"{CONFIRM_VAR}={held.token}" in r for r in health["reasons"]), health["reasons"]

    for call in CALLS:  # the reload completes: the hold lifts, nothing is bought again
        add_call(admin, call, json.dumps(turns(call)))
    cursor = tick(instance, cursor).cursor
    assert held_removals(conn) == [] and counts(conn) == embedded
    assert pipeline_health(instance, VectorStoreResource(), MODEL)["verdict"] == "healthy"
    assert fake_openai.seen.requests == requests

    # A real removal of two calls is within the bound: no confirmation needed.
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DELETE FROM fathom_calls WHERE id IN (9, 10)")
    cursor = tick(instance, cursor).cursor
    assert counts(conn)[0] == 8 and held_removals(conn) == []

    # The application really drops its calls: held again, under a new token; the old one confirms nothing.
    reload_starts(admin)
    cursor = tick(instance, cursor).cursor
    (again,) = held_removals(conn)
    assert again.count == 8 and again.token != held.token
    monkeypatch.setenv(CONFIRM_VAR, held.token)
    cursor = tick(instance, cursor).cursor
    assert counts(conn)[0] == 8 and held_removals(conn)[0].token == again.token
    monkeypatch.setenv(CONFIRM_VAR, again.token)  # the operator confirms this removal
    cursor = tick(instance, cursor).cursor
    assert counts(conn) == (0, 0) and held_removals(conn) == []
    assert instance.get_dynamic_partitions("recordings") == []


def test_the_hourly_reconcile_keeps_partitions_when_the_recordings_table_reads_empty(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBED_SENSOR_RECONCILE_S", "0")  # every tick reconciles partitions with the table
    for i in range(30):
        upsert_transcript(conn, short(f"r{i:02d}"))
    cursor = tick(instance, None).cursor
    assert len(instance.get_dynamic_partitions("recordings")) == 30
    conn.execute("TRUNCATE embed_assets.recordings CASCADE")  # no row trigger: no tombstones
    cursor = tick(instance, cursor).cursor
    assert len(instance.get_dynamic_partitions("recordings")) == 30  # before: all 30 deleted
    (held,) = held_removals(conn)
    assert (held.scope, held.count) == ("partitions", 30)
    monkeypatch.setenv("EMBED_SOURCE_CONFIRM_REMOVALS", held.token)
    tick(instance, cursor)
    assert instance.get_dynamic_partitions("recordings") == [] and held_removals(conn) == []
