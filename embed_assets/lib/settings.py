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
