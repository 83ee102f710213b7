"""A source pass between reconciles (the sensor's 30 s tick, issue 33 item 10) reads a fingerprint of the source's
ids, not every id, while deleted and new rows are still found on the next tick. Counted (rows returned to Python),
not timed. The application's database, its read-only role and the source file are test_source_tables.py's."""

from __future__ import annotations

import json

import psycopg

from embed_assets.defs.resources import VectorStoreResource
from embed_assets.lib.sources.sync import SyncReport, sync_source
from embed_assets_tests.support.counting import Reads, counting_reads
from embed_assets_tests.test_source_tables import (  # noqa: F401 (fixtures)
    JSON_SOURCE,
    add_call,
    app_db,
    settle,
    turns,
    use_source,
)

CALLS = 60


def sync_pass(state: dict) -> tuple[dict, SyncReport, Reads]:
    source = VectorStoreResource().source()
    assert source is not None
    with source.connect() as source_conn, VectorStoreResource().connect() as store_conn, counting_reads() as reads:
        new_state, report = sync_source(
            source, source_conn, store_conn, state, settle_s=0, scan_limit=1000, reconcile_every_s=3600
        )
    return new_state, report, reads


def test_a_quiet_source_tick_reads_no_id_list_and_still_finds_deleted_and_new_calls(
    conn: psycopg.Connection,
    use_source,  # noqa: F811
) -> None:
    admin = use_source(JSON_SOURCE)
    for call in range(1, CALLS + 1):
        add_call(admin, call, json.dumps(turns(call, n=2)))
    state, first, _ = sync_pass({})
    assert first.registry.added == CALLS

    state, quiet, reads = sync_pass(state)
    assert (quiet.registry.added, quiet.registry.removed, quiet.scanned) == (0, 0, 0)
    assert reads.rows < 10, reads.line()  # before: every id of the source, and every id of the registry

    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DELETE FROM fathom_calls WHERE id = 7")
    state, deleted, _ = sync_pass(state)
    assert deleted.registry.removed == 1
    assert conn.execute("SELECT count(*) FROM embed_assets.recordings").fetchone()[0] == CALLS - 1

    add_call(admin, CALLS + 1, json.dumps(turns(CALLS + 1, n=2)))
    state, added, _ = sync_pass(state)
    assert added.registry.added == 1
    _, quiet, reads = sync_pass(state)
    assert (quiet.registry.added, quiet.registry.removed, reads.rows < 10) == (0, 0, True), reads.line()
