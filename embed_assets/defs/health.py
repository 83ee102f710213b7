"""Failed and dead-lettered recordings, from Dagster's own partition status and run history.

A recording is *failed* when Dagster says its `chunk_embeddings` partition is FAILED. It is
*dead-lettered* when, for its current transcript (content hash), the retry schedule has already launched
`EMBED_SMALL_BATCH_ATTEMPTS` small-batch runs: no more automatic retries. It leaves that state as soon as
a run succeeds (by hand from the UI or `dagster job execute -c small_batch.yaml`), or when the transcript
changes (a new content hash starts a new count).
"""

from collections import Counter
from dataclasses import dataclass, field

import dagster as dg

from embed_assets.defs.partitions import recordings_partitions

RETRY_TRIGGER = "retry"
TRIGGER_TAG = "embed_assets/trigger"
SOURCE_HASH_TAG = "embed_assets/source_hash"
EMBEDDINGS = dg.AssetKey("chunk_embeddings")


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


def failure_state(
    instance: dg.DagsterInstance, keys: list[str], hashes: dict[str, str], max_attempts: int
) -> FailureState:
    """Split the FAILED partitions (of recordings still in the source) into retryable and dead-lettered."""
    state = FailureState()
    failed = [k for k in failed_partitions(instance, keys) if k in hashes]
    if not failed:
        return state
    runs = instance.get_run_records(dg.RunsFilter(tags={TRIGGER_TAG: RETRY_TRIGGER}), limit=100_000)
    attempts: Counter[tuple[str, str]] = Counter()
    for record in runs:
        tags = record.dagster_run.tags
        key, h = tags.get("dagster/partition"), tags.get(SOURCE_HASH_TAG, "")
        attempts[(key, h)] += 1
        if not record.dagster_run.is_finished:
            state.in_flight.add(key)
    for k in failed:
        n = attempts[(k, hashes[k][:16])]
        state.attempts[k] = n
        (state.dead_lettered if n >= max_attempts else state.failed).append(k)
    return state
