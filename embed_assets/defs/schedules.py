"""`retry_failed_recordings`: failed partitions re-launched with the small-batch preset, bounded."""

import os

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from embed_assets.defs.config import SMALL_BATCH
from embed_assets.defs.health import RETRY_TRIGGER, SOURCE_HASH_TAG, TRIGGER_TAG, failure_state
from embed_assets.defs.jobs import embed_recordings
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import VectorStoreResource
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.health.incidents import incident_starts
from embed_assets.lib.settings import automation_settings
from embed_assets.lib.sources.discovery import source_hashes, unreadable_ids

DEFAULT_RETRY_CRON = "*/15 * * * *"


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
    retries, visible in `embed-assets status` and the completion_rate check, re-launchable by hand."""
    settings = automation_settings()
    instance = context.instance
    keys = instance.get_dynamic_partitions(recordings_partitions.name)
    with store.connect() as conn:
        hashes = source_hashes(conn, keys)
        unreadable = unreadable_ids(conn)  # retrying cannot read a malformed source row; its change will
        state = failure_state(
            instance, keys, hashes, settings.small_batch_attempts, lambda failed: incident_starts(conn, failed)
        )
    requests = []
    for key in state.failed:
        if key in state.in_flight or key in unreadable:
            continue
        if len(requests) >= settings.retries_per_tick:
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
    context.log.info(f"retrying {len(requests)} recording(s) with the small-batch preset")
    return requests
