"""Error types that carry a message a user can act on (what is wrong, and the fix)."""

from __future__ import annotations


class EmbedAssetsError(Exception):
    """Base class: the message names the thing that is wrong and the fix."""


class ConfigError(EmbedAssetsError):
    """The deployment is misconfigured (key, model, database, dimensions). Retrying cannot help."""


class ProviderError(EmbedAssetsError):
    """The embedding provider rejected a request for a reason retrying cannot fix (400/401/403/404)."""


class TransientProviderError(EmbedAssetsError):
    """The provider kept failing with retryable errors (429/5xx/timeouts) past the retry budget."""


class InputError(EmbedAssetsError):
    """A transcript file or record is malformed; nothing from it was stored."""


class RecordingDeletedError(EmbedAssetsError):
    """The recording is no longer in the source tables. Retrying cannot help; its outputs went with it."""


class DatabaseUnavailableError(EmbedAssetsError):
    """The database could not be reached. At configuration time that is a setup problem (the config check
    reports it); in the middle of a run it is usually a restart or failover, so runs retry it."""
