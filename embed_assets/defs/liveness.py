"""What `embed-assets status` needs beyond the database's numbers, so it never says healthy while it cannot
know: the daemon's heartbeats and the sensor's last tick from the Dagster instance, the configuration (the
source's query run as `check` runs it), and the source rows no partition stands for yet."""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
import psycopg
from dagster._core.scheduler.instigation import InstigatorType

from embed_assets.defs.checks import configuration_report, pipeline_health
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.errors import EmbedAssetsError
from embed_assets.lib.health.status import (
    EXIT_CODES,
    REQUIRED_DAEMONS,
    SENSOR_NAME,
    DaemonFacts,
    daemon_findings,
    unregistered_finding,
    unregistered_ids,
    with_configuration,
    with_findings,
)
from embed_assets.lib.settings import DaemonExpectation, daemon_expectation
from embed_assets.lib.sources.discovery import all_recording_ids
from embed_assets.lib.transcripts import validate_recording_id


def daemon_facts(instance: dg.DagsterInstance, expectation: DaemonExpectation) -> DaemonFacts:
    """The latest heartbeat of each daemon type and the last tick of new_recordings_sensor (in any code location
    of this instance). A daemon is expected when EMBED_EXPECT_DAEMON says so, else when one has ever left a
    heartbeat or a sensor tick in this instance (a deployment that ran one keeps needing it)."""
    now = time.time()
    beats = {kind: now - hb.timestamp for kind, hb in instance.get_daemon_heartbeats().items()}
    states = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.instigator_name == SENSOR_NAME
    ]
    last, last_state = None, states[0] if states else None
    for state in states:
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1):
            if last is None or tick.timestamp > last.timestamp:
                last, last_state = tick, state
    if expectation.expect is not None:
        expected = expectation.expect
        why = f"EMBED_EXPECT_DAEMON={'1' if expected else '0'}"
    else:
        expected = bool(beats) or last is not None
        why = (
            "one has run on this instance: its heartbeats or sensor ticks are recorded; EMBED_EXPECT_DAEMON=0 if "
            "only the CLI is used now"
            if expected
            else "none has run on this instance; EMBED_EXPECT_DAEMON=1 requires one"
        )
    error = last.error.message.strip().splitlines()[0] if last is not None and last.error else None
    return DaemonFacts(
        expected=expected,
        why=why,
        heartbeat_age_s=beats,
        sensor_status=last_state.status.value if last_state is not None else None,
        tick_age_s=now - last.timestamp if last is not None else None,
        tick_status=last.status.value if last is not None else None,
        tick_error=error,
        required=tuple(d for d in REQUIRED_DAEMONS if d in instance.get_required_daemon_types()),
    )


def unregistered_count(instance: dg.DagsterInstance, store: VectorStoreResource) -> int:
    """Source rows no partition stands for yet; with EMBED_SOURCE the source's recordings query runs (read-only)
    as `check` runs it. The caller runs the configuration check first, so a source that fails is reported there."""
    partitions = set(instance.get_dynamic_partitions(recordings_partitions.name))
    source = store.source()
    source_ids = None
    if source is not None:
        with source.connect() as source_conn:
            source_ids = {i for i in source.ids(source_conn) if validate_recording_id(i) is None}
    with store.connect() as conn:
        recordings = all_recording_ids(conn)
    return len(unregistered_ids(partitions, recordings, source_ids))


def status_report(instance: dg.DagsterInstance, store: VectorStoreResource, model_id: str) -> dict[str, Any]:
    """`pipeline_health` (the completion check's numbers and verdict), then raised by what the database cannot
    show: a configuration problem (critical, as the pipeline_health asset does: the source's query failing,
    say), a daemon that is expected but not working, source rows not registered yet (warnings)."""
    h = pipeline_health(instance, store, model_id)
    problems = configuration_report(store, EmbedderResource(), probe=False).problems
    level, reasons = with_configuration(h["verdict"], h["reasons"], problems)
    expectation = daemon_expectation()
    daemon = daemon_facts(instance, expectation)
    findings = daemon_findings(daemon, expectation.stale_s)
    try:
        unregistered: int | None = unregistered_count(instance, store)
    except (EmbedAssetsError, psycopg.Error):
        if not problems:  # the configuration check read the source a moment ago: not a known problem, so raise
            raise
        unregistered = None  # the source cannot be read: the configuration problem above says why and how to fix
    working = daemon.expected and not findings
    if unregistered and (found := unregistered_finding(unregistered, working)):
        findings.append(found)
    level, reasons = with_findings(level, reasons, findings)
    return {
        **h,
        "verdict": level,
        "reasons": reasons,
        "configuration_problems": problems,
        "daemon": {**daemon.as_dict(), "working": working, "stale_after_s": expectation.stale_s},
        "unregistered_source_rows": unregistered,
        "exit_code": EXIT_CODES[level],
    }
