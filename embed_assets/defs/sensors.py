"""`new_recordings_sensor`: new, changed and deleted recordings -> dynamic partitions + run requests."""

import hashlib
import json
from datetime import datetime, timedelta

import dagster as dg

from embed_assets.defs.health import SOURCE_HASH_TAG, TRIGGER_TAG
from embed_assets.defs.jobs import embed_recordings
from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.runs import (
    CANCEL_WINDOW,
    RANGE_END_TAG,
    RANGE_START_TAG,
    in_flight,
    last_cancelled,
    range_bounds,
)
from embed_assets.lib.settings import RECORDINGS_PER_RUN, automation_settings
from embed_assets.lib.sources.discovery import (
    all_recording_ids,
    changes_since,
    db_now,
    deletions_since,
    model_generations,
    pending_before,
    present_ids,
)
from embed_assets.lib.sources.removal_guard import guard
from embed_assets.lib.sources.sync import removal_bound, sync_source

__all__ = ["RANGE_END_TAG", "RANGE_START_TAG", "new_recordings_sensor", "run_key"]


def run_key(recording_id: str, model_ids: list[str], content_hash: str, version: int) -> str:
    """Deterministic: one run per (recording, models it is pending for, content, version). Dagster skips a run
    key it has seen, whatever that run's outcome, so the key must change whenever the work is needed again:
    ``version`` (migration 9) grows with every content change, re-insert and model registration, so an edit
    A -> B -> A, a recording deleted and loaded again, or a model dropped and registered again is a new key;
    an unchanged recording can never be requested twice."""
    return f"{recording_id}@{'+'.join(model_ids)}@{content_hash[:16]}@{version}"


def range_key(members: list[str]) -> str:
    """One run over several recordings: deterministic in its members' own run keys (any change to one of them,
    or to the set, is a new key)."""
    digest = hashlib.sha256("\n".join(members).encode()).hexdigest()[:16]
    first, last = (m.split("@", 1)[0] for m in (members[0], members[-1]))
    return f"{first}..{last}({len(members)})@{digest}"


def contiguous_groups(keys: list[str], order: dict[str, int], most: int) -> list[list[str]]:
    """``keys`` grouped into runs of consecutive partitions (in the partitions' own order, which is what a
    partition range means), at most ``most`` each, in partition order."""
    groups: list[list[str]] = []
    for key in sorted(keys, key=order.__getitem__):
        if groups and order[key] == order[groups[-1][-1]] + 1 and len(groups[-1]) < most:
            groups[-1].append(key)
        else:
            groups.append([key])
    return groups


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
    requests runs to embed them: recordings that are consecutive partitions (a bulk load, a first pass over a
    source) share a run of up to RECORDINGS_PER_RUN, as a backfill's do; scattered ones get a run each. At most
    EMBED_SENSOR_MAX_RUNS runs per tick; the rest follow on the next ticks. Run keys carry the recording's
    generation, so a state that comes back (A -> B -> A, deleted and loaded again) runs again. Recordings whose
    last attempt failed, or whose run an operator cancelled, are left to `retry_failed_recordings`. Once an hour
    it reconciles partitions with the source in full and requests pending rows behind the cursor (a late
    commit) that no queued or running run covers."""
    settings = automation_settings()
    models = sorted(m.model_id for m in store.models(embedder.spec()))
    cursor = json.loads(context.cursor) if context.cursor else {}
    known_in_order = list(context.instance.get_dynamic_partitions(recordings_partitions.name))
    known = set(known_in_order)

    source = store.source()  # EMBED_SOURCE: the user's tables, read in place; None: the project's tables
    with store.connect() as conn:
        # Each model as "model#generation": one dropped and registered again is new too (a cursor from before
        # migration 9 holds bare names, which are generation 0).
        generations = model_generations(conn)
        tokens = [f"{m}#{generations.get(m, 0)}" for m in models]
        before = {t if "#" in t else f"{t}#0" for t in cursor.get("models", tokens)}
        if any(t not in before for t in tokens):
            cursor.pop("ts", None)  # a model registered since the last tick: every recording is pending for it
            cursor.pop("id", None)
            context.log.info(f"models registered since the last tick ({', '.join(models)}): scanning every recording")
        cursor["models"] = tokens
        after = (datetime.fromisoformat(cursor["ts"]), cursor["id"]) if "ts" in cursor else None
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
            log = context.log.warning if report.held else context.log.info
            log(f"{source.describe()}: {report.summary()}")
        now = db_now(conn)
        rows = changes_since(conn, after, now - timedelta(seconds=settings.settle_s), settings.scan_limit)
        deleted, tombstone = deletions_since(conn, int(cursor.get("del", 0)), 100_000)
        # Deletions held back on an earlier tick (below) whose recording is still gone.
        waited = [k for k in cursor.get("held_deletes", []) if k in known]
        waited = sorted(set(waited) - present_ids(conn, waited)) if waited else []
        reconcile = now.timestamp() - float(cursor.get("reconciled", 0)) >= settings.reconcile_every_s
        source_ids = all_recording_ids(conn) if reconcile else None
        if source_ids is not None:  # partitions whose recording is gone without a tombstone: the removal guard's
            stray = known - source_ids - set(deleted)
            if (held := guard(conn, "partitions", sorted(stray), len(known), removal_bound())) is not None:
                context.log.warning(f"reconcile: {held.reason()}")
                source_ids |= stray
        late = []
        if reconcile and after:
            # Not those a queued or running run will write, nor those whose run (of this very row: created after
            # it was written) an operator cancelled: the retry schedule's business, once.
            cancelled = last_cancelled(context.instance, known_in_order, now - CANCEL_WINDOW)
            late = pending_before(
                conn,
                after[0],
                settings.max_runs_per_tick,
                in_flight(context.instance, known_in_order),
                {k: r.create_timestamp for k, r in cancelled.items()},
            )

    def single(recording_id: str, content_hash: str, pending: list[str], version: int) -> dg.RunRequest:
        return dg.RunRequest(
            partition_key=recording_id,
            run_key=run_key(recording_id, pending, content_hash, version),
            tags={TRIGGER_TAG: "sensor", SOURCE_HASH_TAG: content_hash[:16]},
        )

    run_requests: list[dg.RunRequest] = []
    cap = settings.max_runs_per_tick
    # Pending recordings in cursor order, as many as the tick's runs could hold if they were consecutive.
    candidates: list[tuple[int, str, str, list[str], int]] = []  # (row index, id, hash, models, version)
    seen: set[str] = set()
    stop = len(rows)
    for i, row in enumerate(rows):
        if row.pending and not row.failed and row.recording_id not in seen:
            if len(candidates) >= cap * RECORDINGS_PER_RUN:
                stop = i  # the cursor stops before this row; the next tick continues from it
                break
            candidates.append((i, row.recording_id, row.content_hash, row.models, row.version))
            seen.add(row.recording_id)

    # Sets for every membership test: a source re-keyed (100,000 tombstones against as many adds) must stay well
    # inside Dagster's sensor timeout, or the cursor never advances and every tick repeats the work.
    adds = list(dict.fromkeys(r.recording_id for r in rows if r.recording_id not in known))
    deletes = {k for k in deleted if k in known} | set(waited)
    if source_ids is not None:
        adds += sorted(source_ids - known - set(adds))
        deletes |= known - source_ids
    # A partition that bounds a queued or running range run is deleted once no such run names it (defs/runs.py
    # range_bounds): deleted now, it would fail that run, the others of its range included.
    held_deletes = sorted(deletes & range_bounds(context.instance)) if deletes else []
    deletes -= set(held_deletes)
    new_adds = [a for a in adds if a not in deletes]
    # The partitions' order once this tick's adds are applied (the daemon adds them before it launches runs).
    order = {key: i for i, key in enumerate(known_in_order + new_adds)}
    candidates = [c for c in candidates if c[1] in order and c[1] not in deletes]

    def grouped(k: int) -> list[list[str]]:  # the first k candidates (cursor order) as runs
        return contiguous_groups([c[1] for c in candidates[:k]], order, RECORDINGS_PER_RUN)

    groups = grouped(len(candidates))
    if len(groups) > cap:
        # Too scattered for one tick: the longest head of the candidates (in cursor order, so the cursor can stop
        # after it) whose runs fit. Any head of `cap` candidates fits (a run each at worst).
        lo, hi = cap, len(candidates) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(grouped(mid)) <= cap else (lo, mid - 1)
        stop, candidates, groups = candidates[lo][0], candidates[:lo], grouped(lo)
    position = (rows[stop - 1].updated_at, rows[stop - 1].recording_id) if stop > 0 else after
    pending = {rid: (h, models, version) for _, rid, h, models, version in candidates}
    for group in groups:
        if len(group) == 1:
            run_requests.append(single(group[0], *pending[group[0]]))
        else:
            run_requests.append(
                dg.RunRequest(
                    run_key=range_key([run_key(k, pending[k][1], pending[k][0], pending[k][2]) for k in group]),
                    tags={TRIGGER_TAG: "sensor", RANGE_START_TAG: group[0], RANGE_END_TAG: group[-1]},
                )
            )
    requested = set(pending)
    for row in late:
        if len(run_requests) < cap and row.recording_id not in requested:
            requested.add(row.recording_id)
            run_requests.append(single(row.recording_id, row.content_hash, row.models, row.version))

    partition_requests: list = []
    if new_adds:
        partition_requests.append(recordings_partitions.build_add_request(new_adds))
    if deletes:
        partition_requests.append(recordings_partitions.build_delete_request(sorted(deletes)))
    # A recording both re-added and requested must exist as a partition before its run: adds come first.
    run_requests = [r for r in run_requests if r.partition_key not in deletes]

    new_cursor = {
        **cursor,
        "del": tombstone,
        "held_deletes": held_deletes,
        **({"ts": position[0].isoformat(), "id": position[1]} if position else {}),
        **({"reconciled": now.timestamp()} if reconcile else {}),
    }
    context.log.info(
        f"{len(rows)} new/changed row(s) scanned, {len(new_adds)} partition(s) added, {len(deletes)} deleted, "
        f"{len(run_requests)} run(s) requested"
        + (f"; {len(held_deletes)} deletion(s) wait for the range run that names them" if held_deletes else "")
    )
    return dg.SensorResult(
        run_requests=run_requests, dynamic_partitions_requests=partition_requests, cursor=json.dumps(new_cursor)
    )
