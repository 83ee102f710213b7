"""One pass of the sensor over an external source: bring the registry (lib/sources/registry.py) in line with it.

Each pass asks the source server for a fingerprint of its ids (count and hash sum: one row) and reads the ids
themselves (new and deleted recordings: one scan of the id column, every id over the wire) only when it, or the
registry's counts, changed since the last read, a removal is held, or on the reconcile below; then
- with an ``updated_at`` column: the rows changed since the cursor, (updated_at, recording_id), up to a
  settle margin behind the source's clock (a transaction committing late is not skipped), at most
  ``scan_limit`` per pass;
- every ``reconcile_s`` (the source file's ``reconcile_seconds`` without updated_at, the sensor's hourly
  reconcile with it): the content hash of every recording, computed by the source server. That is how a
  source without updated_at finds changed transcripts, and how one with it finds a transcript changed without
  touching updated_at.
Only hashes and metadata cross the wire here; transcripts are read when a partition runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from embed_assets.lib.settings import automation_settings
from embed_assets.lib.sources.external import ExternalSource
from embed_assets.lib.sources.registry import (
    RegistryChanges,
    loaded_among,
    loaded_ids,
    register,
    registered_ids,
    registry_counts,
    remove,
)
from embed_assets.lib.sources.removal_guard import HeldRemoval, RemovalBound, guard, held_removals
from embed_assets.lib.transcripts import validate_recording_id


@dataclass
class SyncReport:
    source_rows: int = 0
    scanned: int = 0  # rows whose hash was read this pass
    registry: RegistryChanges = field(default_factory=RegistryChanges)
    reconciled: bool = False
    unusable_ids: dict[str, str] = field(default_factory=dict)  # id -> why it cannot be a partition key
    held: HeldRemoval | None = None  # removals refused by the guard, waiting for a confirmation

    def summary(self) -> str:
        r = self.registry
        text = (
            f"source: {self.source_rows} recording(s); {r.added} new, {r.changed} changed, {r.renamed} retitled, "
            f"{r.removed} removed ({self.scanned} hashed{', full reconcile' if self.reconciled else ''})"
        )
        if r.conflicts:
            text += f"; {r.conflicts} id(s) already used by recordings loaded from files (left as they are)"
        if self.unusable_ids:
            first = next(iter(self.unusable_ids.items()))
            text += f"; {len(self.unusable_ids)} id(s) skipped, e.g. {first[0]!r}: {first[1]}"
        if self.held is not None:
            text += f"; REMOVAL HELD: {self.held.reason()}"
        return text


def removal_bound() -> RemovalBound:
    """The removal guard's bound and confirmation, from the environment (read at tick time)."""
    s = automation_settings()
    return RemovalBound(s.max_remove_share, s.max_remove_floor, s.confirm_removals)


def sync_source(
    source: ExternalSource,
    source_conn: psycopg.Connection,
    store_conn: psycopg.Connection,
    state: dict[str, Any],
    *,
    settle_s: float,
    scan_limit: int,
    reconcile_every_s: float,
    bound: RemovalBound | None = None,
) -> tuple[dict[str, Any], SyncReport]:
    """Returns the new state (JSON-able: kept in the sensor's cursor) and what changed. Removals past ``bound``
    (default: the EMBED_SOURCE_MAX_REMOVE_* settings) are held (lib/sources/removal_guard.py): see report.held."""
    report = SyncReport()
    source.validate(source_conn)
    now = source.now(source_conn)
    new_state = dict(state)
    period = reconcile_every_s if source.has_updated_at else source.definition.reconcile_s
    reconcile = now.timestamp() - float(state.get("reconciled", 0)) >= period
    # Reading every id on every tick grows with the corpus (issue 33 item 10): only when something may differ.
    seen = [*source.ids_fingerprint(source_conn), *registry_counts(store_conn)]
    held = any(h.scope == source.definition.name for h in held_removals(store_conn))
    ids: set[str] | None = None  # None: not read this pass (the same ids as at the last read, all handled then)
    candidates: set[str] = set()
    if reconcile or held or seen != state.get("seen"):
        ids, candidates = _sync_ids(source, source_conn, store_conn, report, bound)
        new_state["rows"] = report.source_rows
    else:
        report.source_rows = int(state.get("rows", 0))
    if reconcile:
        candidates |= ids or set()
        new_state["reconciled"] = now.timestamp()
        report.reconciled = True
    elif source.has_updated_at:
        after = (datetime.fromisoformat(state["ts"]), state["id"]) if "ts" in state else None
        changed = source.changed_since(source_conn, after, now - timedelta(seconds=settle_s), scan_limit)
        if ids is not None:
            candidates |= {rid for _, rid in changed if rid in ids}
        else:
            usable = {rid for _, rid in changed if validate_recording_id(rid) is None}
            candidates |= usable - loaded_among(store_conn, sorted(usable))
        if changed:
            new_state["ts"], new_state["id"] = changed[-1][0].isoformat(), changed[-1][1]
    if report.reconciled and source.has_updated_at:
        # A full pass covers everything up to now: the cursor moves to the settle margin.
        last = source.latest(source_conn, now - timedelta(seconds=settle_s))
        if last:
            new_state["ts"], new_state["id"] = last[0].isoformat(), last[1]
    rows = source.recordings(source_conn, sorted(candidates))
    report.scanned = len(rows)
    changes = register(store_conn, rows)
    changes.removed = report.registry.removed
    changes.conflicts += report.registry.conflicts  # ids taken before this pass, plus any loaded meanwhile
    report.registry = changes
    if ids is not None:  # what the next pass compares with: the ids read, and the registry they left
        new_state["seen"] = [*seen[:2], *registry_counts(store_conn)]
    return new_state, report


def _sync_ids(
    source: ExternalSource,
    source_conn: psycopg.Connection,
    store_conn: psycopg.Connection,
    report: SyncReport,
    bound: RemovalBound | None,
) -> tuple[set[str], set[str]]:
    """Read every id: remove the registry's recordings gone from the source (within the removal guard).
    Returns the source's usable ids and those new to the registry."""
    ids = source.ids(source_conn)
    for rid in sorted(ids):
        if (why := validate_recording_id(rid)) is not None:  # must be a Dagster partition key
            report.unusable_ids[rid] = why
    ids -= set(report.unusable_ids)
    report.source_rows = len(ids)
    known = registered_ids(store_conn)
    loaded = loaded_ids(store_conn)  # recordings loaded from files keep their id; the source's twin waits
    report.registry.conflicts = len(ids & loaded)
    ids -= loaded
    gone = sorted(known - ids)
    # An empty or partial snapshot (a table reloaded by TRUNCATE + INSERT, a join to a table being rebuilt) must
    # not forget the corpus: past the bound, nothing is removed until this very removal is confirmed.
    report.held = guard(store_conn, source.definition.name, gone, len(known), bound or removal_bound())
    if gone and report.held is None:
        report.registry.removed = remove(store_conn, gone)
    return ids, ids - known
