"""What a sensor tick asked for, in recordings: its run requests cover one partition each or a range."""

from __future__ import annotations

import dagster as dg

from embed_assets.defs.sensors import RANGE_END_TAG, RANGE_START_TAG


def covered(instance: dg.DagsterInstance, result: dg.SensorResult) -> list[str]:
    """The recordings the tick's runs cover, in request order: a run's partition, or every partition of its
    range (consecutive in the partitions' own order, read from the instance after the tick's adds)."""
    partitions = instance.get_dynamic_partitions("recordings")
    out: list[str] = []
    for r in result.run_requests or []:
        if r.partition_key is not None:
            out.append(r.partition_key)
        else:
            start, end = r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]
            out += partitions[partitions.index(start) : partitions.index(end) + 1]
    return out
