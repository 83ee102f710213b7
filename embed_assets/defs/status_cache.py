"""Dagster's asset status cache for chunk_embeddings, refreshed without listing every partition.

`DagsterInstance.get_status_by_partition` keeps, per asset, the materialized, failed and in-progress partition
subsets, refreshed incrementally from the events since its cursor. For dynamic partitions it first checks the
stored value against an id that hashes every partition key (`get_dynamic_partitions_definition_id`): each
check lists the whole corpus from Dagster's storage, twice, and any partition added since the last refresh
(every sensor tick that finds a recording) discards the cache and rebuilds it from every event ever written.
Subsets of dynamic partitions are plain sets of keys, valid whatever keys were added or deleted since, so here
the stored value's own id stands in for the current one: the same incremental refresh, in work that grows
with the events since the cursor and not with the corpus. A deleted partition can stay in a subset: callers
keep the keys still registered (`get_existing_dynamic_partitions`: one query for the keys they keep)."""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any

import dagster as dg
from dagster._core.storage.partition_status_cache import AssetStatusCacheValue, get_and_update_asset_status_cache_value

from embed_assets.defs.partitions import recordings_partitions


class _StoredIdStore:
    """The instance as a dynamic partitions store, but for the definition id: the one the cache was stored with."""

    def __init__(self, instance: dg.DagsterInstance, definition_id: str) -> None:
        self._instance = instance
        self._id = definition_id

    def get_dynamic_partitions_definition_id(self, partitions_def_name: str) -> str:
        return self._id

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        return self._instance.get_dynamic_partitions(partitions_def_name)

    def get_paginated_dynamic_partitions(self, *args: Any, **kwargs: Any) -> Any:
        return self._instance.get_paginated_dynamic_partitions(*args, **kwargs)

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        return self._instance.has_dynamic_partition(partitions_def_name, partition_key)

    def get_existing_dynamic_partitions(self, partitions_def_name: str, partition_keys: Sequence[str]) -> Set[str]:
        return self._instance.get_existing_dynamic_partitions(partitions_def_name, partition_keys)


def status_subsets(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> AssetStatusCacheValue | None:
    """The asset's status cache, brought up to date (and stored back, as Dagster does). With no stored value
    yet, Dagster's own first build (which reads every event once)."""
    record = next(iter(instance.get_asset_records([asset_key])), None)
    stored = record.asset_entry.cached_status if record is not None else None
    loader = (
        instance
        if stored is None or not stored.partitions_def_id
        else _StoredIdStore(instance, stored.partitions_def_id)
    )
    return get_and_update_asset_status_cache_value(
        instance, asset_key, recordings_partitions, dynamic_partitions_loader=loader
    )
