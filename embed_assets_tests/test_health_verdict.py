"""The verdict alarms only when something is wrong: recordings already reported (dead-lettered, unreadable) do not
make a quiet night an incident, an import in flight is not missing work until it outlasts the grace period, and a
warning never silences the dead man's switch. Real Postgres, real Dagster runs, the loopback OpenAI server; the
night passes by moving the rows' clocks back (the database's own now() stays the judge)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from embed_assets.defs.monitoring import pipeline_health as health_asset
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.health.alerting import AlertState, decide
from embed_assets.lib.health.backlog import Backlog
from embed_assets.lib.health.messages import Observation
from embed_assets.lib.health.status import DbStatus, Thresholds, verdict
from embed_assets.lib.settings import automation_settings
from embed_assets.lib.store import record_error
from embed_assets_tests.support.openai_server import FakeOpenAI, Fault
from embed_assets_tests.test_assets import load, short
from embed_assets_tests.test_schedules import evaluate, execute, instance  # noqa: F401 (fixture)

MODEL = "text-embedding-3-small@384"
RESOURCES = {"store": VectorStoreResource(), "embedder": EmbedderResource()}
FAST = {"ops": {"chunk_embeddings": {"config": {"backoff_base_s": 0.01, "step_retry_delay_s": 0.1}}}}
NIGHT_CORPUS = 198  # with the two reported recordings: completion 99%, healthy by that rule
IMPORT_CORPUS = 100


def embed_range(inst: dg.DagsterInstance, keys: list[str]) -> None:
    from embed_assets.definitions import defs

    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    result = defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=inst, run_config=FAST, tags=tags, raise_on_error=False
    )
    assert result.success


def hours_pass(conn: psycopg.Connection, hours: int, ids: list[str] | None = None) -> None:
    """Move every clock the verdict reads ``hours`` back: when the recordings arrived and were embedded."""
    for table, column in (("recordings", "updated_at"), ("chunk_vectors", "embedded_at"),
                          ("embedded_recordings", "embedded_at")):  # fmt: skip
        conn.execute(
            f"UPDATE embed_assets.{table} SET {column} = {column} - make_interval(hours => %s)"  # noqa: S608
            " WHERE %s::text[] IS NULL OR recording_id = ANY(%s)",
            (hours, ids, ids),
        )


def health(inst: dg.DagsterInstance) -> dict:
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    # Dagster resolves new Definitions against the "current" defs-state storage (a ContextVar); runs executed in
    # process earlier in the test can leave it pointing at an instance they disposed. Name this test's instance.
    with set_defs_state_storage(inst.defs_state_storage):
        result = dg.materialize([health_asset], instance=inst, resources=RESOURCES)
    md = result.asset_materializations_for_node("pipeline_health")[0].metadata
    return {k: v.value for k, v in md.items()}


def test_a_quiet_night_with_dead_lettered_and_unreadable_recordings_stays_healthy(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811 (the fixture imported above)
    fake_openai: FakeOpenAI,
    monkeypatch,
) -> None:
    monkeypatch.setenv("EMBED_SMALL_BATCH_ATTEMPTS", "1")
    ids = load(conn, instance, [short(f"r{i:03d}", n=2, extra=str(i)) for i in range(NIGHT_CORPUS)])
    embed_range(instance, ids)
    # One recording the provider rejects: failed, retried once, dead-lettered (reported).
    load(conn, instance, [short("bad", n=2, extra="bad")])
    fake_openai.fault = lambda n: Fault(400, body={"error": {"message": "input rejected"}})
    assert not execute(instance, "bad", FAST)
    (req,) = evaluate(instance)
    assert not execute(instance, "bad", req.run_config, req.tags)
    # One whose source row cannot be read (as the pipeline records it): reported, waits for its row to change.
    load(conn, instance, [short("unreadable", n=2, extra="x")])
    record_error(conn, "unreadable", MODEL, "transcript_chunks", "unreadable source row: malformed JSON", None,
                 unreadable=True)  # fmt: skip

    hours_pass(conn, 7)  # the night: nothing new arrives, nothing is embedded
    h = health(instance)
    assert (h["pending"], h["dead_lettered"], h["unreadable_source_rows"]) == (2, 1, 1)
    # before: critical, "work is pending but nothing was embedded (not for 7.0 h)"
    assert h["verdict"] == "healthy", h["reasons"]


def test_an_import_is_in_flight_until_it_outlasts_the_grace_period(
    conn: psycopg.Connection,
    instance: dg.DagsterInstance,  # noqa: F811
    fake_openai: FakeOpenAI,
    monkeypatch,
) -> None:
    monkeypatch.setenv("EMBED_HEALTH_IN_FLIGHT_S", "3600")
    ids = load(conn, instance, [short(f"r{i:03d}", n=2, extra=str(i)) for i in range(IMPORT_CORPUS)])
    embed_range(instance, ids)
    hours_pass(conn, 7)  # a quiet night; then the morning's import, 5% of the corpus
    new = load(conn, instance, [short(f"s{i:03d}", n=2, extra=f"new {i}") for i in range(5)])
    h = health(instance)
    assert h["pending"] == 5
    # before: critical (nothing embedded for 7 h while work is pending) and completion 95.2% < 99%
    assert h["verdict"] == "healthy", h["reasons"]

    hours_pass(conn, 2, new)  # the import has waited 2 h, longer than the grace, and nothing ran: a stall
    h = health(instance)
    assert h["verdict"] == "warning"
    # 2 h plus however long this test took since the import (minutes under load)
    assert re.fullmatch(
        r"- completion 95.2% < 99%\n- work is pending but nothing was embedded for 12\d min", h["reasons"]
    )

    embed_range(instance, new)
    assert health(instance)["verdict"] == "healthy"


def test_a_warning_keeps_the_dead_mans_switch_alive() -> None:
    state = AlertState()
    now = datetime.now(UTC)
    warning = Observation(1, now, "warning", ("3 dead-lettered recordings > 2",), (), 100, 0, 0, 3)
    decision = decide(state, warning, [], now, now - now)
    assert [m.kind for m in decision.messages] == ["warn"]
    assert decision.heartbeat  # before: the heartbeat stopped, so the outside monitor paged as if the daemon died
    critical = Observation(2, now, "critical", ("work is pending but nothing was embedded (never)",), (), 100, 1, 0, 0)
    assert not decide(state, critical, [], now, now - now).heartbeat


def db(pending: int = 0, done: int = 1000, idle_s: float | None = 60.0) -> DbStatus:
    return DbStatus(MODEL, done + pending, done, 0, pending, 0, 0, 0, None, idle_s)


@pytest.mark.parametrize(
    ("s", "work", "level", "reason"),
    [
        # reported recordings only, a night without embedding: nothing for the idle rule
        (db(2, idle_s=9 * 3600), Backlog(2, 2, 0, None), "healthy", None),
        # a first import into a fresh install, minutes old: never embedded, but it has not waited
        (db(5, done=0, idle_s=None), Backlog(5, 0, 5, 300.0), "healthy", None),
        # the same import stalled for 2 h: the grace is the completion rule's; the idle rule sees the stall
        (db(5, done=0, idle_s=None), Backlog(5, 0, 5, 7200.0), "warning", "nothing was embedded for 120 min"),
        (db(5, done=0, idle_s=None), Backlog(5, 0, 0, 7 * 3600.0), "critical", "not for 7.0 h"),
        # a big import in flight: not missing work yet
        (db(50, idle_s=30), Backlog(50, 0, 50, 600.0), "healthy", None),
        (db(50, idle_s=30), Backlog(50, 0, 10, 8 * 3600.0), "warning", "completion 96.2% < 99% (10 newer"),
    ],
)
def test_verdict_weighs_reported_and_in_flight_work(s: DbStatus, work: Backlog, level: str, reason: str | None) -> None:
    got, reasons = verdict(s, 0, 0, Thresholds(), work)
    assert got == level, reasons
    assert (reasons == []) if reason is None else any(reason in r for r in reasons), reasons


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EMBED_SOURCE_MAX_REMOVE_SHARE", "1.5", "EMBED_SOURCE_MAX_REMOVE_SHARE=1.5 is out of range; set it between"),
        ("EMBED_SOURCE_MAX_REMOVE_FLOOR", "-1", "EMBED_SOURCE_MAX_REMOVE_FLOOR=-1 is out of range; set it at least"),
        ("EMBED_HEALTH_IN_FLIGHT_S", "an hour", "EMBED_HEALTH_IN_FLIGHT_S='an hour' is not a number"),
    ],
)
def test_guard_and_grace_settings_name_the_variable_and_the_fix(
    monkeypatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        automation_settings()
