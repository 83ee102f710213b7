"""Failed and dead-lettered recordings, from Dagster's own partition status and run history.

A recording is *failed* when Dagster says its `chunk_embeddings` partition is FAILED. It is
*dead-lettered* when, in its current incident, the retry schedule has already launched
`EMBED_SMALL_BATCH_ATTEMPTS` small-batch runs: no more automatic retries. An incident is one transcript (content
hash) failing since the recording's last success for the model(s) it fails for (lib/health/incidents.py): it
ends as soon as a run succeeds (by hand from the UI or `dagster job execute -c small_batch.yaml`), or when the
transcript changes (a new content hash starts a new count). Retries of an old incident, or made before a shadow
model that fails now was registered, do not count.
"""

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg

from embed_assets.defs.partitions import recordings_partitions
from embed_assets.defs.status_cache import status_subsets

RETRY_TRIGGER = "retry"
TRIGGER_TAG = "embed_assets/trigger"
SOURCE_HASH_TAG = "embed_assets/source_hash"
EMBEDDINGS = dg.AssetKey("chunk_embeddings")
RUN_QUERY_BATCH = 500  # failed partitions whose retry runs are read in one query


@dataclass
class FailureState:
    failed: list[str] = field(default_factory=list)  # FAILED and still eligible for automatic retries
    dead_lettered: list[str] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)  # a small-batch retry is queued or running
    attempts: dict[str, int] = field(default_factory=dict)  # small-batch attempts for the current content

    @property
    def all_failed(self) -> list[str]:
        return self.failed + self.dead_lettered


def failed_partitions(instance: dg.DagsterInstance, keys: list[str]) -> list[str]:
    if not keys:
        return []
    status = instance.get_status_by_partition(EMBEDDINGS, keys, recordings_partitions) or {}
    return [k for k in keys if status.get(k) == dg.AssetPartitionStatus.FAILED]


def failed_keys(instance: dg.DagsterInstance) -> list[str]:
    """The FAILED partitions of chunk_embeddings, as `failed_partitions` over every registered partition says, read
    from Dagster's asset status cache (the subsets `get_status_by_partition` reads, defs/status_cache.py): the failed
    subset minus the in-progress one, of partitions still registered (one query). Its work grows with the failures
    and the events since the cache's last refresh, not with the corpus: no partition is listed, none gets a status
    built."""
    if not instance.can_read_asset_status_cache():
        return failed_partitions(instance, list(instance.get_dynamic_partitions(recordings_partitions.name)))
    value = status_subsets(instance, EMBEDDINGS)
    if value is None:
        return []
    failed = value.deserialize_failed_partition_subsets(recordings_partitions).get_partition_keys()
    running = set(value.deserialize_in_progress_partition_subsets(recordings_partitions).get_partition_keys())
    failed = [k for k in failed if k not in running]
    registered = instance.get_existing_dynamic_partitions(recordings_partitions.name, failed) if failed else set()
    return sorted(k for k in failed if k in registered)


def failure_state(
    instance: dg.DagsterInstance,
    keys: list[str],
    hashes: dict[str, str],
    max_attempts: int,
    incidents: Callable[[list[str]], Mapping[str, datetime | None]] | None = None,
    known_failed: bool = False,
) -> FailureState:
    """Split the FAILED partitions (of recordings still in the source) into retryable and dead-lettered.
    ``incidents``: given the failed ones, when each one's current incident began (lib/health/incidents.py
    `incident_starts`); retry runs created before it do not count (without it, every retry of the transcript does).
    Only the failed partitions' retry runs are read, all of them, in batches of RUN_QUERY_BATCH partitions.
    ``known_failed``: ``keys`` are the FAILED partitions already (`failed_keys`), not asked of Dagster again."""
    state = FailureState()
    failed = [k for k in (keys if known_failed else failed_partitions(instance, keys)) if k in hashes]
    if not failed:
        return state
    since = incidents(failed) if incidents is not None else {}
    attempts: Counter[str] = Counter()
    for i in range(0, len(failed), RUN_QUERY_BATCH):
        part = failed[i : i + RUN_QUERY_BATCH]
        starts = [since.get(k) for k in part]
        after = None if any(s is None for s in starts) else min(starts).astimezone(UTC)  # type: ignore[union-attr]
        records = instance.get_run_records(
            dg.RunsFilter(tags={TRIGGER_TAG: RETRY_TRIGGER, "dagster/partition": part}, created_after=after)
        )
        for record in records:
            tags = record.dagster_run.tags
            key = tags.get("dagster/partition", "")
            if not record.dagster_run.is_finished:
                state.in_flight.add(key)
            start = since.get(key)
            if tags.get(SOURCE_HASH_TAG, "") == hashes[key][:16] and (start is None or record.create_timestamp > start):
                attempts[key] += 1
    for k in failed:
        n = attempts[k]
        state.attempts[k] = n
        (state.dead_lettered if n >= max_attempts else state.failed).append(k)
    return state
