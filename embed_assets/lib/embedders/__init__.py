"""Typed embedders chosen by a `provider` tag (one typed path, no switches on environment)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from embed_assets.lib.embedders.base import Embedder, EmbedResult
from embed_assets.lib.embedders.local import LocalEmbedderConfig
from embed_assets.lib.embedders.openai import OpenAIEmbedderConfig

EmbedderConfig = Annotated[LocalEmbedderConfig | OpenAIEmbedderConfig, Field(discriminator="provider")]

__all__ = ["Embedder", "EmbedResult", "EmbedderConfig", "LocalEmbedderConfig", "OpenAIEmbedderConfig"]
