"""What a piece of code reads: SQL statements and the rows they return (psycopg), and the partition keys it
lists from or hands to Dagster. Used by the completion check's cost test and its bench figure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg


@dataclass
class Reads:
    statements: int = 0  # SQL statements executed on the vector store
    rows: int = 0  # rows those statements returned to Python
    dagster_keys: int = 0  # partition keys listed from Dagster or whose status was asked for

    def line(self) -> str:
        return f"{self.statements} SQL statements, {self.rows} rows, {self.dagster_keys} Dagster partition keys"


@contextmanager
def counting_reads() -> Iterator[Reads]:
    """Count, while the block runs, every psycopg statement and its rows, and the partition keys passed
    through `DagsterInstance.get_dynamic_partitions` (returned) and `get_status_by_partition` (asked for)."""
    reads = Reads()
    execute = psycopg.Cursor.execute
    listed = dg.DagsterInstance.get_dynamic_partitions
    status = dg.DagsterInstance.get_status_by_partition

    def counted_execute(self: psycopg.Cursor, *args: Any, **kwargs: Any) -> psycopg.Cursor:
        out = execute(self, *args, **kwargs)
        reads.statements += 1
        if self.description is not None:
            reads.rows += max(self.rowcount, 0)
        return out

    def counted_listed(self: dg.DagsterInstance, *args: Any, **kwargs: Any) -> Any:
        keys = listed(self, *args, **kwargs)
        reads.dagster_keys += len(keys)
        return keys

    def counted_status(self: dg.DagsterInstance, asset_key: Any, partition_keys: Any, *args: Any, **kw: Any) -> Any:
        reads.dagster_keys += len(partition_keys)
        return status(self, asset_key, partition_keys, *args, **kw)

    psycopg.Cursor.execute = counted_execute  # type: ignore[method-assign]
    dg.DagsterInstance.get_dynamic_partitions = counted_listed  # type: ignore[method-assign]
    dg.DagsterInstance.get_status_by_partition = counted_status  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        dg.DagsterInstance.get_dynamic_partitions = listed  # type: ignore[method-assign]
        dg.DagsterInstance.get_status_by_partition = status  # type: ignore[method-assign]
