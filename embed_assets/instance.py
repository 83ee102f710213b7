"""Dagster instance storage on the project's database server, for dagster.yaml.

dagster-postgres wants a URL in dagster.yaml, but the embedded server's socket URL is only known once it
runs. These thin subclasses resolve it when the instance loads (starting the embedded server if needed):
`EMBED_DAGSTER_DATABASE_URL`, else database `dagster` on the `EMBED_DATABASE_URL` server, else the
embedded server under `EMBED_HOME`. Local artifacts and compute logs go under `EMBED_HOME/dagster`.
"""

from __future__ import annotations

from typing import Any

from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage

from embed_assets.lib.database import dagster_database_url
from embed_assets.lib.settings import load_settings


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


class EmbedRunStorage(_ResolvedWhenLoaded, PostgresRunStorage):
    pass


class EmbedEventLogStorage(_ResolvedWhenLoaded, PostgresEventLogStorage):
    pass


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
