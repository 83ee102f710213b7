"""`health_alerts`: alerts that reach people, and the heartbeat. A sensor (every EMBED_ALERT_INTERVAL_S, 60 s)
reads the latest `pipeline_health` evaluation and the runs that failed since its cursor, and sends one
message per change of verdict and at most one digest of failed runs per EMBED_ALERT_DIGEST_MINUTES to Slack,
a generic webhook and email (each off until its variables are set); after each new evaluation that is not
critical (a warning never silences it) it pings EMBED_HEARTBEAT_URL, so an outside monitor notices when the
daemon itself stops.

All its state is its cursor (lib/health/alerting.py): no table of our own. A failed delivery is retried
within the tick and on the next ticks, logged as a warning, and never raises: a tick that raised would not
store its cursor, so the next one would send again what the other channels had already received.
"""

import os
from datetime import UTC, datetime, timedelta

import dagster as dg

from embed_assets.defs.partitions import recordings_partitions
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.health.alert_settings import AlertSettings, alert_settings
from embed_assets.lib.health.alerting import (
    MAX_PENDING,
    REDELIVERY_TICKS,
    AlertState,
    FailedRun,
    Pending,
    decide,
    initial_runs_after,
)
from embed_assets.lib.health.channels import deliver, ping_heartbeat
from embed_assets.lib.health.messages import Message, Observation, redact, redact_message

HEALTH = dg.AssetKey("pipeline_health")
DEFAULT_INTERVAL_S = 60
MAX_RUNS_PER_TICK = 200  # failed runs read (and their causes looked up) per tick; the rest on the next


def alert_interval_s() -> int:
    """EMBED_ALERT_INTERVAL_S: seconds between the alert sensor's evaluations (read when the code loads)."""
    raw = os.environ.get("EMBED_ALERT_INTERVAL_S", "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"EMBED_ALERT_INTERVAL_S={raw!r} is not a whole number of seconds >= 1; e.g. 60")
    return int(raw)


def latest_observation(instance: dg.DagsterInstance) -> Observation | None:
    """The latest pipeline_health evaluation, as its metadata recorded it."""
    records = instance.fetch_materializations(HEALTH, limit=1).records
    if not records:
        return None
    record = records[0]
    md = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    causes = md.get("causes") or {}
    return Observation(
        evaluation_id=record.storage_id,
        evaluated_at=datetime.fromtimestamp(record.timestamp, UTC),
        verdict=str(md.get("verdict", "healthy")),
        reasons=tuple(causes.get("reasons", ())),
        problems=tuple(causes.get("problems", ())),
        recordings=int(md.get("recordings", 0)),
        affected=int(md.get("pending", 0)),
        failed=int(md.get("failed", 0)),
        dead_lettered=int(md.get("dead_lettered", 0)),
    )


def _cause(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed, in one line: a failed blocking check's own description (it names the fix), else the
    innermost error of the first failed step, else the run's failure message."""
    events = instance.all_logs(
        run_id,
        of_type={
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            dg.DagsterEventType.STEP_FAILURE,
            dg.DagsterEventType.RUN_FAILURE,
        },
    )
    step_error = run_error = None
    for e in events:
        event = e.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.event_specific_data
            if not check.passed and check.description:
                return f"{check.check_name}: {check.description}"
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE and step_error is None:
            err = event.step_failure_data.error
            while err is not None and err.cause is not None and err.cls_name.startswith("Dagster"):
                err = err.cause
            step_error = err.message if err is not None else None
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and run_error is None:
            run_error = e.message
    text = (step_error or run_error or "failed (no error recorded)").strip()
    return text.splitlines()[0][:300]


def _recordings(tags: dict[str, str], keys: list[str] | None) -> int:
    if "dagster/partition" in tags:
        return 1
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start and end and keys and start in keys and end in keys:
        return keys.index(end) - keys.index(start) + 1
    return 0


def failed_runs(instance: dg.DagsterInstance, after: datetime, secrets: list[str]) -> list[FailedRun]:
    """Runs (any job) that failed after ``after``, oldest first, each with its cause (redacted)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=after),
        limit=MAX_RUNS_PER_TICK,
        order_by="update_timestamp",
        ascending=True,
    )
    keys = None
    if any("dagster/asset_partition_range_start" in r.dagster_run.tags for r in records):
        keys = instance.get_dynamic_partitions(recordings_partitions.name)
    return [
        FailedRun(
            r.dagster_run.run_id,
            r.update_timestamp.astimezone(UTC),
            _recordings(r.dagster_run.tags, keys),
            redact(_cause(instance, r.dagster_run.run_id), secrets),
        )
        for r in records
    ]


def _send(context: dg.SensorEvaluationContext, settings: AlertSettings, state: AlertState, new: list[Message]) -> str:
    """Deliver the new messages to every channel and the pending ones to theirs; keep what failed for later."""
    sends = [(p.channel, p.message) for p in state.pending] + [(c, m) for m in new for c in settings.channels]
    ticks_left = {(p.channel, id(p.message)): p.ticks_left for p in state.pending}
    state.pending = []
    outcome = []
    for channel, m, d in deliver(settings, sends):
        if d.ok:
            context.log.info(f"alert '{m.kind}' delivered to {channel} (attempt {d.attempts})")
            outcome.append(f"{m.kind} -> {channel}: sent")
            continue
        left = ticks_left.get((channel, id(m)), REDELIVERY_TICKS + 1) - 1 if d.attempts else 0  # 0: unconfigured
        if left > 0 and len(state.pending) < MAX_PENDING:
            state.pending.append(Pending(channel, m, left))
        verdict = f"will retry on the next {left} tick(s)" if left > 0 else "dropped"
        context.log.warning(f"alert '{m.kind}' to {channel} failed after {d.attempts} attempt(s): {d.error}; {verdict}")
        outcome.append(f"{m.kind} -> {channel}: FAILED ({d.error}; {verdict})")
    return "; ".join(outcome)


@dg.sensor(minimum_interval_seconds=alert_interval_s(), default_status=dg.DefaultSensorStatus.RUNNING)
def health_alerts(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Alerts that reach people: one message per change of verdict (error, warn, recovered) of the
    pipeline_health evaluation, with the cause, since when, the recordings affected and what to do; failed runs
    summarized in at most one digest per EMBED_ALERT_DIGEST_MINUTES (15); to Slack
    (EMBED_ALERT_SLACK_WEBHOOK_URL), a generic/Discord/Teams webhook (EMBED_ALERT_WEBHOOK_URL) and email
    (EMBED_ALERT_SMTP_*), all off by default. After each new evaluation that is not critical it pings
    EMBED_HEARTBEAT_URL. Requests no runs; delivery failures are retried and logged, never raised."""
    settings = alert_settings()
    if not settings.anything:
        return dg.SkipReason("no alert channel and no heartbeat configured (EMBED_ALERT_*, EMBED_HEARTBEAT_URL)")
    now = datetime.now(UTC)
    interval = timedelta(minutes=settings.digest_minutes)
    state = AlertState.from_json(context.cursor)
    if state.runs_after is None:
        state.runs_after = initial_runs_after(now, interval)
    failures = failed_runs(context.instance, state.runs_after, settings.secrets())
    decision = decide(state, latest_observation(context.instance), failures, now, interval)
    new = [redact_message(m, settings.secrets()) for m in decision.messages]  # the cursor keeps them redacted
    summary = [_send(context, settings, state, new)] if new or state.pending else []
    if decision.heartbeat:
        beat = ping_heartbeat(settings)
        if beat is not None:
            if beat.ok:
                summary.append("heartbeat: pinged")
            else:
                context.log.warning(f"heartbeat ping failed after {beat.attempts} attempt(s): {beat.error}")
                summary.append(f"heartbeat: FAILED ({beat.error})")
    text = "; ".join(s for s in summary if s) or (
        f"verdict {state.verdict}; {len(failures)} new failed run(s)"
        + (f", {state.window.runs} awaiting the digest" if state.window else "")
    )
    return dg.SensorResult(skip_reason=text, cursor=state.to_json())
