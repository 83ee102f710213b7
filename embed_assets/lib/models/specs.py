"""What we know about each embedding model: dimension, input limit, tokenizer and price."""

from __future__ import annotations

from dataclasses import dataclass

from embed_assets.lib.errors import ConfigError
from embed_assets.lib.settings import PROVIDERS


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    name: str
    dimension: int
    native_dimension: int
    max_input_tokens: int
    tokenizer: str  # "cl100k_base" or "minilm"
    usd_per_million_tokens: float

    @property
    def model_id(self) -> str:
        """The value stored in the `model` column: name, plus the reduced dimension when one is asked for."""
        if self.dimension != self.native_dimension:
            return f"{self.name}@{self.dimension}"
        return self.name


# max_input_tokens for MiniLM: 256 word pieces including [CLS] and [SEP]; longer input is silently truncated.
_KNOWN: dict[tuple[str, str], tuple[int, int, str, float, bool]] = {
    # (provider, model): (native dim, max input tokens, tokenizer, USD per 1M tokens, supports `dimensions`)
    ("local", "all-MiniLM-L6-v2"): (384, 256, "minilm", 0.0, False),
    ("openai", "text-embedding-3-small"): (1536, 8192, "cl100k_base", 0.02, True),
    ("openai", "text-embedding-3-large"): (3072, 8192, "cl100k_base", 0.13, True),
    ("openai", "text-embedding-ada-002"): (1536, 8192, "cl100k_base", 0.10, False),
}


def resolve_model(provider: str, model: str, dimensions: int | None = None) -> ModelSpec:
    """The spec for a provider/model pair, or a ConfigError that says what to set."""
    if provider not in PROVIDERS:
        raise ConfigError(f"EMBED_PROVIDER={provider!r} is not known; set it to one of {', '.join(PROVIDERS)}")
    known = _KNOWN.get((provider, model))
    if known is None:
        if provider == "local":
            local = sorted(m for p, m in _KNOWN if p == "local")
            raise ConfigError(f"EMBED_MODEL={model!r} is not a bundled local model; set EMBED_MODEL to one of {local}")
        # An OpenAI-compatible endpoint serving another model: we cannot know its dimension.
        if not dimensions:
            raise ConfigError(
                f"EMBED_MODEL={model!r} is not a known OpenAI model, so its vector size is unknown; "
                "set EMBED_DIMENSIONS to the dimension the endpoint returns"
            )
        return ModelSpec(provider, model, dimensions, dimensions, 8192, "cl100k_base", 0.0)
    native, max_tokens, tokenizer, price, reducible = known
    dim = dimensions or native
    if dim != native and not reducible:
        raise ConfigError(f"{model} does not support EMBED_DIMENSIONS={dim}; unset EMBED_DIMENSIONS")
    if not 1 <= dim <= native:
        raise ConfigError(f"EMBED_DIMENSIONS={dim} is out of range for {model}: use 1..{native}")
    return ModelSpec(provider, model, dim, native, max_tokens, tokenizer, price)


def provider_of(name: str) -> str | None:
    """The provider that serves a known model name here, or None."""
    return next((p for p, m in _KNOWN if m == name), None)


def spec_for_model_id(model_id: str, dimension: int, provider: str | None = None) -> ModelSpec:
    """The spec behind a stored ``model`` value (``name`` or ``name@dim``), for vectors written before the
    registry existed: the provider is the one that serves the name here (an unknown name is an
    OpenAI-compatible endpoint's model)."""
    name = model_id.split("@", 1)[0]
    if provider is None:
        provider = provider_of(name) or "openai"
    return resolve_model(provider, name, dimension)
