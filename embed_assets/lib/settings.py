"""Environment configuration (DESIGN.md's user contract), read at run time, never at import."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from embed_assets.lib.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")
Provider = Literal["local", "openai"]
PROVIDERS: tuple[str, ...] = ("local", "openai")
DEFAULT_MODELS: dict[str, str] = {"local": "all-MiniLM-L6-v2", "openai": "text-embedding-3-small"}
# Recordings per backfill run (BackfillPolicy.multi_run) and per `embed-assets embed` run. Each run is a
# process launch and, inside its steps, a cold start (imports, tokenizer, connections) and three checks: at
# 25 these per-run costs were most of a short call's time (`make bench`, e2e); each recording is still
# committed on its own.
RECORDINGS_PER_RUN = 100
# Recordings `embed-assets embed` writes at once per run (its runs go one at a time; `make bench`, e2e).
CLI_WRITERS = 2


DEFAULT_SCHEMA = "embed_assets"


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    dagster_database_url: str | None
    home: Path
    provider: str
    model: str
    dimensions: int | None
    openai_base_url: str | None
    schema: str = DEFAULT_SCHEMA  # EMBED_SCHEMA: where every object of the project lives (lib/db/names.py)

    @property
    def embedded(self) -> bool:
        return self.database_url is None


class SettingError(ConfigError, ValueError):
    """An environment variable that cannot be read as its type (a ValueError too, for callers that catch that)."""


def _env(name: str, cast: Callable[[str], T], default: D) -> T | D:
    """A numeric environment variable, or ``default`` when unset; a clear error when malformed."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise SettingError(f"{name}={raw!r} is not {kind}; set it to {kind} or unset it") from None


def env_int(name: str, default: int) -> int:
    """A whole-number environment variable, or ``default`` when unset; a clear error when malformed."""
    return _env(name, int, default)


def vector_cache_days() -> float:
    """EMBED_VECTOR_CACHE_DAYS (7): how long vectors bought but not yet written (a failed write or window) and the
    vectors of removed recordings stay content-addressed in the cache (lib/vector_cache.py)."""
    days = _env("EMBED_VECTOR_CACHE_DAYS", float, 7.0)
    if not days > 0:
        raise ValueError(f"EMBED_VECTOR_CACHE_DAYS={days:g} must be > 0 (days); set a positive number or unset it")
    return days


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
        dimensions=_env("EMBED_DIMENSIONS", int, None),
        openai_base_url=os.environ.get("OPENAI_BASE_URL", "").strip() or None,
        schema=os.environ.get("EMBED_SCHEMA", "").strip() or DEFAULT_SCHEMA,
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
    in_flight_grace_s: float = 6 * 3600  # EMBED_HEALTH_IN_FLIGHT_S: pending work younger is in flight (verdict)
    max_remove_share: float = 0.1  # EMBED_SOURCE_MAX_REMOVE_SHARE: share of recordings one pass may remove
    max_remove_floor: int = 20  # EMBED_SOURCE_MAX_REMOVE_FLOOR: removals a pass may always make
    confirm_removals: str | None = None  # EMBED_SOURCE_CONFIRM_REMOVALS: the token of one held removal


def automation_settings() -> AutomationSettings:
    return AutomationSettings(
        max_runs_per_tick=_env("EMBED_SENSOR_MAX_RUNS", int, 50),
        scan_limit=_env("EMBED_SENSOR_SCAN_LIMIT", int, 20_000),
        settle_s=_env("EMBED_SENSOR_SETTLE_S", float, 10.0),
        reconcile_every_s=_env("EMBED_SENSOR_RECONCILE_S", float, 3600.0),
        small_batch_attempts=_env("EMBED_SMALL_BATCH_ATTEMPTS", int, 3),
        retries_per_tick=_env("EMBED_RETRIES_PER_TICK", int, 20),
        in_flight_grace_s=_bounded("EMBED_HEALTH_IN_FLIGHT_S", float, 6 * 3600.0, 0, None),
        max_remove_share=_bounded("EMBED_SOURCE_MAX_REMOVE_SHARE", float, 0.1, 0, 1),
        max_remove_floor=_bounded("EMBED_SOURCE_MAX_REMOVE_FLOOR", int, 20, 0, None),
        confirm_removals=os.environ.get("EMBED_SOURCE_CONFIRM_REMOVALS", "").strip() or None,
    )


@dataclass(frozen=True)
class DaemonExpectation:
    """How `embed-assets status` judges the Dagster daemon (README: status)."""

    expect: bool | None  # EMBED_EXPECT_DAEMON: 1 requires a daemon, 0 never expects one, unset: one has run here
    stale_s: float  # EMBED_DAEMON_STALE_S: a heartbeat or sensor tick older than this means the daemon is down


def daemon_expectation() -> DaemonExpectation:
    raw = os.environ.get("EMBED_EXPECT_DAEMON", "").strip().lower()
    if raw not in ("", "auto", "1", "true", "yes", "0", "false", "no"):
        raise SettingError(f"EMBED_EXPECT_DAEMON={raw!r} is not known; set it to 1, 0 or auto (or unset it)")
    expect = None if raw in ("", "auto") else raw in ("1", "true", "yes")
    return DaemonExpectation(expect, _env("EMBED_DAEMON_STALE_S", float, 300.0))


def pool_wait_limit_s() -> float:
    """EMBED_POOL_WAIT_LIMIT_S: how long a step may wait for a pool slot (embedding_provider) while the same
    runs hold every slot, before its run fails naming them and the fix (default 1800 s: longer than a
    100-recording step takes against a rate-limited provider; a slot changing hands restarts the clock)."""
    return _env("EMBED_POOL_WAIT_LIMIT_S", float, 1800.0)


def _bounded(name: str, cast: Callable[[str], T], default: T, low: float, high: float | None) -> T:
    value = _env(name, cast, default)
    if value < low or (high is not None and value > high):  # type: ignore[operator]
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SettingError(f"{name}={value!r} is out of range; set it {span} or unset it")
    return value
