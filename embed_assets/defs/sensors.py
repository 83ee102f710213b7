"""`new_recordings_sensor`: new, changed and deleted recordings -> dynamic partitions + run requests."""

import json
from datetime import datetime, timedelta

import dagster as dg

from embed_assets.defs.health import SOURCE_HASH_TAG, TRIGGER_TAG
from embed_assets.defs.jobs import embed_recordings
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.settings import automation_settings
from embed_assets.lib.sources.discovery import all_recording_ids, changes_since, db_now, deletions_since, pending_before
from embed_assets.lib.sources.sync import sync_source


def run_key(recording_id: str, model_ids: list[str], content_hash: str) -> str:
    """Deterministic: one run per (recording, models it is pending for, content). A changed transcript gets a
    new key, and so does a model registered later (a shadow being built); an unchanged one can never be
    requested twice (Dagster skips a run key it has seen)."""
    return f"{recording_id}@{'+'.join(model_ids)}@{content_hash[:16]}"


@dg.sensor(
    job=embed_recordings,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_recordings_sensor(
    context: dg.SensorEvaluationContext, store: VectorStoreResource, embedder: EmbedderResource
) -> dg.SensorResult:
    """Finds recordings that are new or changed (content hash) in the source tables by an (updated_at,
    recording_id) cursor, and deleted ones by tombstone (with EMBED_SOURCE, the user's own tables are first read
    in place into the project's registry of recordings: lib/sources/sync.py); adds/deletes their partitions and
    requests one run per recording to embed (at most EMBED_SENSOR_MAX_RUNS per tick; the rest follow on the
    next ticks). Recordings whose last attempt failed are left to `retry_failed_recordings`. Once an hour it
    reconciles partitions with the source in full."""
    settings = automation_settings()
    models = sorted(m.model_id for m in store.models(embedder.spec()))
    cursor = json.loads(context.cursor) if context.cursor else {}
    if any(m not in cursor.get("models", models) for m in models):
        cursor.pop("ts", None)  # a model registered since the last tick: every recording is pending for it
        cursor.pop("id", None)
        context.log.info(f"models registered since the last tick ({', '.join(models)}): scanning every recording")
    cursor["models"] = models
    after = (datetime.fromisoformat(cursor["ts"]), cursor["id"]) if "ts" in cursor else None
    known = set(context.instance.get_dynamic_partitions(recordings_partitions.name))

    source = store.source()  # EMBED_SOURCE: the user's tables, read in place; None: the project's tables
    with store.connect() as conn:
        if source is not None:
            with source.connect() as source_conn:
                cursor["source"], report = sync_source(
                    source,
                    source_conn,
                    conn,
                    cursor.get("source", {}),
                    settle_s=settings.settle_s,
                    scan_limit=settings.scan_limit,
                    reconcile_every_s=settings.reconcile_every_s,
                )
            context.log.info(f"{source.describe()}: {report.summary()}")
        now = db_now(conn)
        rows = changes_since(conn, after, now - timedelta(seconds=settings.settle_s), settings.scan_limit)
        deleted, tombstone = deletions_since(conn, int(cursor.get("del", 0)), 100_000)
        reconcile = now.timestamp() - float(cursor.get("reconciled", 0)) >= settings.reconcile_every_s
        source_ids = all_recording_ids(conn) if reconcile else None
        late = pending_before(conn, after[0], settings.max_runs_per_tick) if reconcile and after else []

    run_requests: list[dg.RunRequest] = []
    requested: set[str] = set()
    position = after

    def request(recording_id: str, content_hash: str, pending: list[str]) -> None:
        requested.add(recording_id)
        run_requests.append(
            dg.RunRequest(
                partition_key=recording_id,
                run_key=run_key(recording_id, pending, content_hash),
                tags={TRIGGER_TAG: "sensor", SOURCE_HASH_TAG: content_hash[:16]},
            )
        )

    for row in rows:
        if row.pending and not row.failed and row.recording_id not in requested:
            if len(run_requests) >= settings.max_runs_per_tick:
                break  # the cursor stops here; the next tick continues from this row
            request(row.recording_id, row.content_hash, row.models)
        position = (row.updated_at, row.recording_id)
    for row in late:
        if len(run_requests) < settings.max_runs_per_tick and row.recording_id not in requested:
            request(row.recording_id, row.content_hash, row.models)

    adds = [r.recording_id for r in rows if r.recording_id not in known]
    deletes = [k for k in deleted if k in known]
    if source_ids is not None:
        adds += sorted(source_ids - known - set(adds))
        deletes += sorted(known - source_ids - set(deletes))
    new_adds = list(dict.fromkeys(a for a in adds if a not in deletes))
    partition_requests: list = []
    if new_adds:
        partition_requests.append(recordings_partitions.build_add_request(new_adds))
    if deletes:
        partition_requests.append(recordings_partitions.build_delete_request(deletes))
    # A recording both re-added and requested must exist as a partition before its run: adds come first.
    run_requests = [r for r in run_requests if r.partition_key not in deletes]

    new_cursor = {
        **cursor,
        "del": tombstone,
        **({"ts": position[0].isoformat(), "id": position[1]} if position else {}),
        **({"reconciled": now.timestamp()} if reconcile else {}),
    }
    context.log.info(
        f"{len(rows)} new/changed row(s) scanned, {len(new_adds)} partition(s) added, {len(deletes)} deleted, "
        f"{len(run_requests)} run(s) requested"
    )
    return dg.SensorResult(
        run_requests=run_requests, dynamic_partitions_requests=partition_requests, cursor=json.dumps(new_cursor)
    )
