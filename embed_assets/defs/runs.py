"""Which recordings embedding runs cover: those still queued or in progress, and cancelled ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import dagster as dg

# The tags by which a run covers a range of partitions (what a backfill's runs carry; dagster's own names).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
# How far back a cancelled run is looked for (by the retry schedule, which picks cancelled work up again on its
# next tick, and by the sensor's hourly pass, which leaves that work to it).
CANCEL_WINDOW = timedelta(days=7)

# Queued or in progress: a run that will still write (or that is being cancelled: it may still write).
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def covered(run: dg.DagsterRun, order: dict[str, int], keys: Sequence[str]) -> list[str]:
    """The partitions a run covers: its partition, or every partition of its range (``keys`` in the partitions'
    own order, ``order`` their positions); a range whose ends are gone covers what is left between them."""
    tags = run.tags
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start is None or end is None or start not in order or end not in order:
        return [k for k in (start, end) if k is not None]
    return list(keys[order[start] : order[end] + 1])


def runs_of(
    instance: dg.DagsterInstance, statuses: list[dg.DagsterRunStatus], updated_after: datetime | None = None
) -> list[dg.RunRecord]:
    """The runs in ``statuses``, newest first: of any job, since a UI launch of the assets runs `__ASSET_JOB`
    (only runs of the `recordings` partitions carry the partition tags ``covered`` reads)."""
    runs = dg.RunsFilter(statuses=statuses, updated_after=updated_after)
    return list(instance.get_run_records(runs))


def in_flight(instance: dg.DagsterInstance, keys: Sequence[str]) -> set[str]:
    """Recordings a queued or running embedding run (single or range) will still write."""
    order = {k: i for i, k in enumerate(keys)}
    return {k for r in runs_of(instance, UNFINISHED) for k in covered(r.dagster_run, order, keys)}


def last_cancelled(
    instance: dg.DagsterInstance, keys: Sequence[str], updated_after: datetime
) -> dict[str, dg.RunRecord]:
    """The newest cancelled embedding run of each recording, among runs cancelled after ``updated_after``."""
    order = {k: i for i, k in enumerate(keys)}
    out: dict[str, dg.RunRecord] = {}
    for record in runs_of(instance, [dg.DagsterRunStatus.CANCELED], updated_after):
        for k in covered(record.dagster_run, order, keys):
            out.setdefault(k, record)
    return out


def range_bounds(instance: dg.DagsterInstance) -> set[str]:
    """The first and last partitions of every queued or running range run. Dagster resolves a range run's
    partitions when the run starts: a bound deleted before then fails the whole run before any step, its other
    recordings included (issue 34), so the sensor deletes such a partition only once no unfinished run names it."""
    bounds: set[str] = set()
    for record in runs_of(instance, UNFINISHED):
        tags = record.dagster_run.tags
        if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
            bounds |= {tags[RANGE_START_TAG], tags[RANGE_END_TAG]}
    return bounds
