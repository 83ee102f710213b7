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


class EmbedRunStorage(PostgresRunStorage):
    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> EmbedRunStorage:
        return cls(postgres_url=dagster_database_url(), inst_data=inst_data)


class EmbedEventLogStorage(PostgresEventLogStorage):
    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> EmbedEventLogStorage:
        return cls(postgres_url=dagster_database_url(), inst_data=inst_data)


class EmbedScheduleStorage(PostgresScheduleStorage):
    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> EmbedScheduleStorage:
        return cls(postgres_url=dagster_database_url(), inst_data=inst_data)


class EmbedArtifactStorage(LocalArtifactStorage):
    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> EmbedArtifactStorage:
        return cls(base_dir=_dagster_dir("artifacts"), inst_data=inst_data)


class EmbedComputeLogManager(LocalComputeLogManager):
    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> EmbedComputeLogManager:
        return cls(base_dir=_dagster_dir("compute_logs"), inst_data=inst_data)
