"""Dagster instance storage on the project's database server, for dagster.yaml.

dagster-postgres wants a URL in dagster.yaml, but the embedded server's socket URL is only known once it
runs. These thin subclasses resolve it when the instance loads (starting the embedded server if needed):
`EMBED_DAGSTER_DATABASE_URL`, else database `dagster` on the `EMBED_DATABASE_URL` server, else the
embedded server under `EMBED_HOME`. Local artifacts and compute logs go under `EMBED_HOME/dagster`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._utils.concurrency import ConcurrencyClaimStatus
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine

from embed_assets.dead_runs import WORKER_TAG, this_worker, worker_of
from embed_assets.lib.db.connection import dagster_database_url
from embed_assets.lib.settings import env_int, load_settings
from embed_assets.pool_wait import PoolWaits


def _dagster_dir(sub: str) -> str:
    path = load_settings().home / "dagster" / sub
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class _ResolvedWhenLoaded:
    """No config in dagster.yaml: the constructor arguments are resolved when the instance loads."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> Any:
        return cls(**cls.resolve(), inst_data=inst_data)

    @staticmethod
    def resolve() -> dict[str, Any]:
        return {"postgres_url": dagster_database_url()}


def pool_size() -> int:
    """EMBED_DB_POOL_SIZE: connections each Dagster storage engine keeps per process (and as many again
    in overflow). The one setting that bounds the project's connections (README "Deploy on Supabase")."""
    return max(1, env_int("EMBED_DB_POOL_SIZE", 2))


class _PooledEngine:
    """dagster-postgres opens a new connection for every statement (NullPool): ~3 ms each here, 400+ per
    25-recording run, ~1.4 s of a ~10 s run (`make bench`, e2e figures). Keep a small pool per process
    (at least two: storing one event nests a second checkout), checked before use so a restarted server
    costs one reconnect."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = pool_size()
        self._engine = create_pg_engine(
            self.postgres_url,
            None,
            isolation_level="AUTOCOMMIT",
            pool_size=n,
            max_overflow=n,
            pool_pre_ping=True,
            pool_recycle=3600,
        )


class EmbedRunStorage(_ResolvedWhenLoaded, _PooledEngine, PostgresRunStorage):
    pass


# A run over 100 recordings stores 100 materializations per asset. Dagster writes them one row and four
# statements at a time unless DAGSTER_EVENT_BATCH_SIZE > 0, when a step's materializations go in one
# insert (200 unchanged recordings in 8 runs: 11.5 s -> 9.4 s, median of 3 alternating pairs; README
# "Performance"). Dagster reads the variable in the process that stores the events (the run worker).
EVENT_BATCH_SIZE = "500"


class EmbedEventLogStorage(_ResolvedWhenLoaded, _PooledEngine, PostgresEventLogStorage):
    """Loaded by every process that opens this instance, so it turns event batching on for all of them
    (a value the user set, including 0 to turn it off, is kept)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
        super().__init__(*args, **kwargs)

    def store_event(self, event: EventLogEntry) -> None:
        """Also records, when a run starts, where its worker runs (WORKER_TAG: host, pid, process start time), so
        a run whose worker died can be told from one still working (dead_runs.py)."""
        super().store_event(event)
        if event.is_dagster_event and event.dagster_event_type == DagsterEventType.RUN_START:
            self._instance.add_run_tags(event.run_id, {WORKER_TAG: this_worker()})

    def claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None
    ) -> ConcurrencyClaimStatus:
        """Dagster's claim; a blocked one waits visibly and boundedly instead of spinning (pool_wait.py)."""
        status = super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)
        if status.is_claimed:
            _POOL_WAITS.claimed(run_id, step_key)
            return status
        return _POOL_WAITS.blocked(self._instance, status, run_id, step_key)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Also one insert for the per-partition ASSET_MATERIALIZATION_PLANNED events a run's creation stores (one
        per partition and asset: 400 for a 200-recording `embed-assets embed`, ~0.75 s one at a time, `make
        bench` e2e). dagster-postgres batches only materializations and observations and stores any other batch
        event by event, each an insert, a NOTIFY and an upsert of the asset's row. Here a run of consecutive
        planned events goes in one insert, and each asset's row is upserted once, from its last event: what
        the event-by-event path leaves, as those upserts set absolute values (the run id and the event's
        time). Every other run of events keeps Dagster's path, in order."""
        for planned, run in groupby(events, key=_is_planned):
            if planned:
                self._store_planned(list(run))
            else:
                super().store_event_batch(list(run))  # materializations: one insert, as Dagster does

    def _store_planned(self, events: list[EventLogEntry]) -> None:
        if len(events) < 2:
            for event in events:
                self.store_event(event)
            return
        with self._connect() as conn:
            result = conn.execute(self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id))
            ids = [int(row[0]) for row in result.fetchall()]
        last: dict[str, tuple[EventLogEntry, int]] = {}
        for event, event_id in zip(events, ids, strict=True):
            last[event.get_dagster_event().asset_key.to_string()] = (event, event_id)
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, ids)  # none for planned events today; kept as Dagster does
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)


_POOL_WAITS = PoolWaits()


def _is_planned(event: EventLogEntry) -> bool:
    return event.is_dagster_event and event.get_dagster_event().is_asset_materialization_planned


class EmbedScheduleStorage(_ResolvedWhenLoaded, PostgresScheduleStorage):
    pass


class EmbedArtifactStorage(_ResolvedWhenLoaded, LocalArtifactStorage):
    @staticmethod
    def resolve() -> dict[str, Any]:
        return {"base_dir": _dagster_dir("artifacts")}


class EmbedComputeLogManager(_ResolvedWhenLoaded, LocalComputeLogManager):
    @staticmethod
    def resolve() -> dict[str, Any]:
        return {"base_dir": _dagster_dir("compute_logs")}


class EmbedRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (a run worker process per run, through the code server), plus the worker
    health check its run-monitoring daemon asks for: the default launcher has none, so a run whose worker was
    killed stayed STARTED, holding its pool slots, forever. A worker recorded on this host whose process is
    gone is FAILED: the daemon then marks the run failed, and frees its slots free_slots_after_run_end_seconds
    later (dagster.yaml `run_monitoring`). A worker on another host, or not recorded yet, counts as running."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = worker_of(run)
        if worker.state == "dead":
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker {worker.where} is gone")
        return CheckRunHealthResult(WorkerStatus.RUNNING, worker.describe())
