"""`embed-assets status` never says healthy while it cannot know (issue 37 item 3): the daemon's heartbeats and
the sensor's last tick when a daemon is expected, the source's query run as `check` runs it, source rows not
registered yet, and exit codes cron and CI can use (0 healthy, 1 warning, 2 critical, 3 cannot evaluate).
Subprocesses as a user runs them, the real embedded server, a Dagster home and database of the test's own; the
daemon's traces are written with Dagster's own instance APIs (heartbeats, instigator state, ticks)."""

# ruff: noqa: F811 (fixtures imported from the modules that define them are parameters of the tests below)
from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    SensorInstigatorData,
    TickData,
    TickStatus,
)
from dagster._daemon.types import DaemonHeartbeat

from embed_assets.lib.health.status import REQUIRED_DAEMONS, SENSOR_NAME, DaemonFacts, daemon_findings
from embed_assets_tests.support.dagster_dev import DagsterDev, make_home
from embed_assets_tests.test_console import cli
from embed_assets_tests.test_embed_removals import home_instance  # noqa: F401 (a fixture)
from embed_assets_tests.test_source_tables import JSON_SOURCE, add_call, app_db, source_file, turns  # noqa: F401

# The keys `status --json` had before this issue: scripts read them, so they stay.
KEYS_BEFORE = {
    "model", "recordings", "embedded_current", "stale", "never_embedded", "chunks", "vectors", "vectors_last_hour",
    "last_embedded_at", "seconds_since_last_embedding", "stale_ids", "unreadable_source_rows", "completion_rate",
    "pending", "partitions", "failed", "dead_lettered", "failed_ids", "dead_lettered_ids", "last_errors", "verdict",
    "reasons", "source", "models",
}  # fmt: skip


FRESH = dict.fromkeys(REQUIRED_DAEMONS, 10.0)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (DaemonFacts(False, "none has run"), []),  # the CLI alone: nothing to say
        (DaemonFacts(True, "", FRESH, "DECLARED_IN_CODE", 20.0, "SKIPPED"), []),
        (DaemonFacts(True, "", FRESH, "STOPPED", 20.0, "SKIPPED"), [f"{SENSOR_NAME} is stopped"]),
        (
            DaemonFacts(True, "", FRESH, "RUNNING", 20.0, "FAILURE", "boom"),
            [f"the last tick of {SENSOR_NAME} failed: boom"],
        ),
        (
            DaemonFacts(True, "", {"SENSOR": 10.0}, "RUNNING", 20.0, "SKIPPED"),
            ["(SCHEDULER, QUEUED_RUN_COORDINATOR) was"],
        ),
        (DaemonFacts(True, "", FRESH, "RUNNING", 900.0, "SKIPPED"), [f"{SENSOR_NAME} last ticked 15 min ago (> 5 min"]),
        (DaemonFacts(True, "", {}, None), ["no heartbeat", f"{SENSOR_NAME} has never ticked"]),
    ],
)
def test_daemon_findings(facts: DaemonFacts, expected: list[str]) -> None:
    found = daemon_findings(facts, stale_s=300)
    assert len(found) == len(expected) and all(level == "warning" for level, _ in found)
    for (_, reason), text in zip(found, expected, strict=True):
        assert text in reason, reason


def status(home: Path, dagster_db: str) -> tuple[int, dict]:
    proc = cli("status", "--json", home=home, dagster_db=dagster_db)
    return proc.returncode, json.loads(proc.stdout)


def daemon_traces(instance, age_s: float) -> None:
    """What a running daemon leaves in the instance, ``age_s`` seconds ago: a heartbeat of each daemon the
    project needs and a (skipped) tick of new_recordings_sensor, as `dagster-daemon run` writes them."""
    at = time.time() - age_s
    for kind in REQUIRED_DAEMONS:
        instance.add_daemon_heartbeat(DaemonHeartbeat(at, kind, "test-daemon"))
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("embed_assets"), "__repository__")
    state = InstigatorState(
        origin.get_instigator_origin(SENSOR_NAME),
        InstigatorType.SENSOR,
        InstigatorStatus.DECLARED_IN_CODE,
        SensorInstigatorData(last_tick_timestamp=at, min_interval=30),
    )
    if instance.get_instigator_state(state.instigator_origin_id, state.selector_id) is None:
        instance.add_instigator_state(state)
    instance.create_tick(
        TickData(
            instigator_origin_id=state.instigator_origin_id,
            instigator_name=SENSOR_NAME,
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.SKIPPED,
            timestamp=at,
            selector_id=state.selector_id,
            skip_reason="no new recordings",
        )
    )


def test_status_exits_0_when_healthy_and_its_json_keeps_every_key(
    conn: psycopg.Connection, fake_openai, dagster_db: str, home_instance
) -> None:
    home, _ = home_instance
    assert cli("sample", "2", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    assert cli("embed", home=home, dagster_db=dagster_db).returncode == 0
    code, data = status(home, dagster_db)
    assert code == 0 and data["verdict"] == "healthy", data["reasons"]
    assert KEYS_BEFORE <= set(data)
    assert data["daemon"]["expected"] is False and data["unregistered_source_rows"] == 0 and data["exit_code"] == 0
    text = cli("status", home=home, dagster_db=dagster_db)
    assert text.returncode == 0 and "daemon: not expected (none has run on this instance" in text.stdout


def test_a_stopped_daemon_makes_status_warn_and_exit_1(
    conn: psycopg.Connection, fake_openai, dagster_db: str, home_instance
) -> None:
    """Everything embedded, but the daemon stopped two hours ago: its last heartbeat and the sensor's last tick
    are old, so nothing new would be picked up. The old status said "healthy" and exited 0."""
    home, open_instance = home_instance
    assert cli("sample", "2", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    assert cli("embed", home=home, dagster_db=dagster_db).returncode == 0
    with open_instance() as instance:
        daemon_traces(instance, age_s=2 * 3600)
    code, data = status(home, dagster_db)
    assert code == 1 and data["verdict"] == "warning" and data["exit_code"] == 1
    assert data["embedded_current"] == 2 and data["completion_rate"] == 1.0  # the numbers alone look healthy
    reasons = "\n".join(data["reasons"])
    assert "the Dagster daemon's last heartbeat (SENSOR, SCHEDULER, QUEUED_RUN_COORDINATOR) was 2.0 h ago" in reasons
    assert f"{SENSOR_NAME} last ticked 2.0 h ago" in reasons
    assert data["daemon"]["expected"] is True and data["daemon"]["working"] is False
    assert data["daemon"]["tick_status"] == "SKIPPED" and data["daemon"]["tick_age_s"] >= 2 * 3600
    text = cli("status", home=home, dagster_db=dagster_db)
    assert text.returncode == 1 and "new_recordings_sensor last ticked" in text.stdout

    # The daemon back: a fresh heartbeat and tick, and the same state is healthy again.
    with open_instance() as instance:
        daemon_traces(instance, age_s=5)
    code, data = status(home, dagster_db)
    assert code == 0 and data["verdict"] == "healthy", data["reasons"]
    assert data["daemon"]["working"] is True and data["daemon"]["tick_age_s"] < 300


def test_a_broken_source_makes_status_critical_with_the_checks_message(
    conn: psycopg.Connection, app_db, dagster_db: str, home_instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMBED_SOURCE whose recordings query fails: no source recording can be found or embedded. The old status
    named the source and said healthy, exit 0."""
    home, _ = home_instance
    admin, reader = app_db
    add_call(admin, 1, json.dumps(turns(1)))
    monkeypatch.setenv("FATHOM_DATABASE_URL", reader)
    bad = tmp_path / "bad.yaml"
    bad.write_text(JSON_SOURCE.replace("public.fathom_calls", "public.fathom_call"))
    monkeypatch.setenv("EMBED_SOURCE", str(bad))
    code, data = status(home, dagster_db)
    assert code == 2 and data["verdict"] == "critical"
    problem = data["configuration_problems"][0]
    assert 'the recordings query fails: relation "public.fathom_call" does not exist; fix it in' in problem
    assert problem in data["reasons"] and data["unregistered_source_rows"] is None
    text = cli("status", home=home, dagster_db=dagster_db)
    assert text.returncode == 2 and "source not readable" in text.stdout and "reader-pw" not in text.stdout


def test_source_rows_not_registered_make_status_warn_until_embed_registers_them(
    conn: psycopg.Connection, app_db, fake_openai, dagster_db: str, home_instance, tmp_path: Path, monkeypatch
) -> None:
    """Two calls in the user's tables that no sensor tick or `embed` has seen: completion counts only what is
    registered (0 of 0: 100%), so the old status said healthy."""
    home, _ = home_instance
    admin, reader = app_db
    for call in (1, 2):
        add_call(admin, call, json.dumps(turns(call)))
    monkeypatch.setenv("FATHOM_DATABASE_URL", reader)
    monkeypatch.setenv("EMBED_SOURCE", str(source_file(tmp_path, JSON_SOURCE)))
    code, data = status(home, dagster_db)
    assert code == 1 and data["unregistered_source_rows"] == 2
    assert any("2 source row(s) not registered yet" in r for r in data["reasons"])
    embed = cli("embed", home=home, dagster_db=dagster_db)
    assert embed.returncode == 0, embed.stdout + embed.stderr
    code, data = status(home, dagster_db)
    assert code == 0 and data["unregistered_source_rows"] == 0 and data["embedded_current"] == 2, data["reasons"]


def test_status_that_cannot_be_evaluated_exits_3(dagster_db: str, home_instance, monkeypatch) -> None:
    home, _ = home_instance
    monkeypatch.setenv("EMBED_DATABASE_URL", "postgresql://nobody:x@127.0.0.1:1/nothing")
    proc = cli("status", home=home, dagster_db=dagster_db)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "status cannot be evaluated" in lines[0] and "EMBED_DATABASE_URL" in lines[0]
    as_json = cli("status", "--json", home=home, dagster_db=dagster_db)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["verdict"] == "unknown"


def test_status_follows_the_real_daemon_running_then_stopped(
    conn: psycopg.Connection, fake_openai, dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`embed-assets dev` (webserver and daemon) on the test's home: status finds the daemon's heartbeats and the
    sensor's ticks where the real daemon writes them, says healthy and exits 0; once it is stopped, the same state
    warns (exit 1) as soon as its traces are older than EMBED_DAEMON_STALE_S."""
    home = make_home(tmp_path / "dagster_home")
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")
    assert cli("sample", "2", "--no-long-call", home=home, dagster_db=dagster_db).returncode == 0
    assert cli("embed", home=home, dagster_db=dagster_db).returncode == 0

    def poll(done, timeout_s: float, what: str) -> tuple[int, dict]:
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            last = status(home, dagster_db)
            if done(*last):
                return last
            time.sleep(2)
        raise AssertionError(f"{what} not seen within {timeout_s:.0f} s; last status: {last}")

    with DagsterDev(home, {"EMBED_DAGSTER_DATABASE_URL": dagster_db}, tmp_path / "dagster-dev.log", progress=print):
        code, data = poll(lambda c, d: d["daemon"]["working"], 240, "the daemon's heartbeats and a sensor tick")
        assert code == 0 and data["verdict"] == "healthy", data["reasons"]
        assert data["daemon"]["sensor_status"] in ("DECLARED_IN_CODE", "RUNNING") and data["daemon"]["tick_status"]
    monkeypatch.setenv("EMBED_DAEMON_STALE_S", "5")
    code, data = poll(lambda c, d: c == 1, 120, "status warning once the daemon stopped")
    assert data["verdict"] == "warning" and data["daemon"]["expected"] is True and not data["daemon"]["working"]
    assert any("the Dagster daemon's last heartbeat" in r for r in data["reasons"]), data["reasons"]
