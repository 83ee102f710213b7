"""Environment configuration (DESIGN.md's user contract), read at run time, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Provider = Literal["local", "openai"]
PROVIDERS: tuple[str, ...] = ("local", "openai")
DEFAULT_MODELS: dict[str, str] = {"local": "all-MiniLM-L6-v2", "openai": "text-embedding-3-small"}


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    dagster_database_url: str | None
    home: Path
    provider: str
    model: str
    dimensions: int | None
    openai_base_url: str | None

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def _int_or_none(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not an integer; set it to a whole number or unset it") from e


def load_settings() -> Settings:
    """Read the EMBED_* variables. The API key is deliberately not part of Settings (secrets stay out)."""
    provider = os.environ.get("EMBED_PROVIDER", "").strip().lower() or "local"
    model = os.environ.get("EMBED_MODEL", "").strip() or DEFAULT_MODELS.get(provider, "")
    return Settings(
        database_url=os.environ.get("EMBED_DATABASE_URL", "").strip() or None,
        dagster_database_url=os.environ.get("EMBED_DAGSTER_DATABASE_URL", "").strip() or None,
        home=Path(os.environ.get("EMBED_HOME", "").strip() or ".embed_assets").expanduser().resolve(),
        provider=provider,
        model=model,
        dimensions=_int_or_none("EMBED_DIMENSIONS"),
        openai_base_url=os.environ.get("OPENAI_BASE_URL", "").strip() or None,
    )


@dataclass(frozen=True)
class AutomationSettings:
    """Knobs of the sensor, the retry schedule and the health thresholds (read at tick time)."""

    max_runs_per_tick: int  # EMBED_SENSOR_MAX_RUNS: run requests per sensor tick (protects the run queue)
    scan_limit: int  # EMBED_SENSOR_SCAN_LIMIT: source rows read per tick
    settle_s: float  # EMBED_SENSOR_SETTLE_S: ignore rows younger than this (late commits)
    reconcile_every_s: float  # EMBED_SENSOR_RECONCILE_S: full partition/source reconcile period
    small_batch_attempts: int  # EMBED_SMALL_BATCH_ATTEMPTS: automatic small-batch retries before dead-letter
    retries_per_tick: int  # EMBED_RETRIES_PER_TICK: small-batch runs the schedule launches per tick


def _env_num(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not a number; set a number or unset it") from e


def automation_settings() -> AutomationSettings:
    return AutomationSettings(
        max_runs_per_tick=int(_env_num("EMBED_SENSOR_MAX_RUNS", 50)),
        scan_limit=int(_env_num("EMBED_SENSOR_SCAN_LIMIT", 20_000)),
        settle_s=_env_num("EMBED_SENSOR_SETTLE_S", 10),
        reconcile_every_s=_env_num("EMBED_SENSOR_RECONCILE_S", 3600),
        small_batch_attempts=int(_env_num("EMBED_SMALL_BATCH_ATTEMPTS", 3)),
        retries_per_tick=int(_env_num("EMBED_RETRIES_PER_TICK", 20)),
    )
