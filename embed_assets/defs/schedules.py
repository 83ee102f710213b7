"""`retry_failed_recordings`: failed partitions re-launched with the small-batch preset, bounded."""

import os

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from embed_assets.defs.config import SMALL_BATCH
from embed_assets.defs.health import RETRY_TRIGGER, SOURCE_HASH_TAG, TRIGGER_TAG, failure_state
from embed_assets.defs.jobs import embed_recordings
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import VectorStoreResource
from embed_assets.defs.runs import CANCEL_WINDOW, RANGE_END_TAG, RANGE_START_TAG, in_flight, last_cancelled
from embed_assets.defs.sensors import contiguous_groups, range_key, run_key
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.health.incidents import incident_starts
from embed_assets.lib.settings import RECORDINGS_PER_RUN, automation_settings
from embed_assets.lib.sources.discovery import SourceChange, changes_of, db_now, source_hashes, unreadable_ids

DEFAULT_RETRY_CRON = "*/15 * * * *"
RESUME_TRIGGER = "resume"  # a run that picks up a cancelled sensor run's work


def cron_setting(name: str, default: str) -> str:
    """A cron expression from the environment variable ``name`` (read when the code location loads)."""
    cron = os.environ.get(name, "").strip() or default
    if not is_valid_cron_string(cron):
        raise ConfigError(f"{name}={cron!r} is not a cron expression; use five fields, e.g. {default!r}")
    return cron


def retry_cron() -> str:
    """EMBED_RETRY_CRON: when the retry schedule ticks."""
    return cron_setting("EMBED_RETRY_CRON", DEFAULT_RETRY_CRON)


@dg.schedule(
    job=embed_recordings,
    cron_schedule=retry_cron(),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def retry_failed_recordings(context: dg.ScheduleEvaluationContext, store: VectorStoreResource):
    """Every 15 minutes (EMBED_RETRY_CRON): each recording whose chunk_embeddings partition is FAILED is
    re-launched alone with the small-batch preset (5 vectors per insert, long timeouts). After
    EMBED_SMALL_BATCH_ATTEMPTS (3) such runs for the same transcript it is dead-lettered (a source row that
    cannot be read is not retried: only its change can help, and the sensor sees that): no more automatic
    retries, visible in `embed-assets status` and the completion_rate check, re-launchable by hand.

    Work of a sensor run that an operator cancelled (the recording still pending, no run of it queued or
    running, its partition not FAILED) is launched again on the next tick, once: a cancelled re-launch is
    respected, and so is a cancelled run launched by hand (UI, backfill)."""
    settings = automation_settings()
    instance = context.instance
    keys = instance.get_dynamic_partitions(recordings_partitions.name)
    with store.connect() as conn:
        hashes = source_hashes(conn, keys)
        unreadable = unreadable_ids(conn)  # retrying cannot read a malformed source row; its change will
        cancelled = {
            k: record.dagster_run
            for k, record in last_cancelled(instance, keys, db_now(conn) - CANCEL_WINDOW).items()
            if record.dagster_run.tags.get(TRIGGER_TAG) == "sensor"
        }
        current = changes_of(conn, cancelled) if cancelled else {}
        state = failure_state(
            instance, keys, hashes, settings.small_batch_attempts, lambda failed: incident_starts(conn, failed)
        )
    # Not those Dagster calls FAILED (the retries' business), nor unreadable rows (only their change helps).
    resumes = resume_requests(
        instance, keys, cancelled, current, set(state.all_failed) | unreadable, settings.max_runs_per_tick
    )
    requests = list(resumes)
    for key in state.failed:
        if key in state.in_flight or key in unreadable:
            continue
        if len(requests) - len(resumes) >= settings.retries_per_tick:
            break
        attempt = state.attempts[key] + 1
        h = hashes[key][:16]
        requests.append(
            dg.RunRequest(
                partition_key=key,
                run_key=f"retry:{key}:{h}:{attempt}",
                run_config=SMALL_BATCH,
                tags={TRIGGER_TAG: RETRY_TRIGGER, SOURCE_HASH_TAG: h, "embed_assets/attempt": str(attempt)},
            )
        )
    if not requests:
        return dg.SkipReason(
            f"{len(state.failed)} failed (retries in flight: {len(state.in_flight)}, unreadable source rows "
            f"waiting for a fix: {len(unreadable & set(state.failed))}), "
            f"{len(state.dead_lettered)} dead-lettered: nothing to launch"
        )
    context.log.info(
        f"retrying {len(requests) - len(resumes)} recording(s) with the small-batch preset; "
        f"{len(resumes)} run(s) picking up cancelled work"
    )
    return requests


def resume_requests(
    instance: dg.DagsterInstance,
    keys: list[str],
    cancelled: dict[str, dg.DagsterRun],
    current: dict[str, SourceChange],
    failed: set[str],
    most: int,
) -> list[dg.RunRequest]:
    """Runs (at most ``most``, consecutive partitions sharing one as the sensor's do) for the recordings whose
    newest cancelled run the sensor launched and that are still pending: not embedded, not in ``failed`` (FAILED
    partitions are the retries' business), no run of theirs queued or running. A recording whose error was
    recorded inside the cancelled run is resumed too: its partition is CANCELED, not FAILED, so no retry would
    ever come, and the sensor leaves recordings with an error to the retries. A cancelled run of these is tagged
    RESUME_TRIGGER, so a second cancel is respected (the newest cancelled run is then not the sensor's)."""
    waiting = [k for k in cancelled if k in current and current[k].pending and k not in failed]
    if not waiting:
        return []
    busy = in_flight(instance, keys)
    order = {k: i for i, k in enumerate(keys)}
    groups = contiguous_groups([k for k in waiting if k not in busy], order, RECORDINGS_PER_RUN)[:most]
    requests = []
    for group in groups:
        members = [f"{run_key(k, current[k].models, current[k].content_hash, current[k].version)}" for k in group]
        origin = cancelled[group[0]].run_id[:8]
        if len(group) == 1:
            (k,) = group
            requests.append(
                dg.RunRequest(
                    partition_key=k,
                    run_key=f"resume:{members[0]}:{origin}",
                    tags={TRIGGER_TAG: RESUME_TRIGGER, SOURCE_HASH_TAG: current[k].content_hash[:16]},
                )
            )
        else:
            requests.append(
                dg.RunRequest(
                    run_key=f"resume:{range_key(members)}",
                    tags={TRIGGER_TAG: RESUME_TRIGGER, RANGE_START_TAG: group[0], RANGE_END_TAG: group[-1]},
                )
            )
    return requests
