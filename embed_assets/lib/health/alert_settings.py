"""Alert channels and the heartbeat, from the environment (all off by default). Dagster-free.

Every URL here is a secret (a Slack incoming webhook embeds its token, a heartbeat URL its check id), so
`AlertSettings` never shows one: `repr` masks them, and `secrets()` lists every value the redaction pass
removes from a message before it is sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from embed_assets.lib.db.connection import libpq_url
from embed_assets.lib.errors import ConfigError

TlsMode = Literal["starttls", "ssl", "none"]
DEFAULT_DIGEST_MINUTES = 15.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    tls: TlsMode
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AlertSettings:
    slack_webhook_url: str | None = field(default=None, repr=False)  # EMBED_ALERT_SLACK_WEBHOOK_URL
    webhook_url: str | None = field(default=None, repr=False)  # EMBED_ALERT_WEBHOOK_URL (Discord/Teams/generic)
    smtp: SmtpSettings | None = None  # EMBED_ALERT_SMTP_*
    heartbeat_url: str | None = field(default=None, repr=False)  # EMBED_HEARTBEAT_URL
    digest_minutes: float = DEFAULT_DIGEST_MINUTES  # EMBED_ALERT_DIGEST_MINUTES
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)  # other secret values in the environment

    @property
    def channels(self) -> list[str]:
        """The configured message channels, by name (never by URL)."""
        return [
            name
            for name, on in (("slack", self.slack_webhook_url), ("webhook", self.webhook_url), ("email", self.smtp))
            if on
        ]

    @property
    def anything(self) -> bool:
        return bool(self.channels or self.heartbeat_url)

    def secrets(self) -> list[str]:
        """Every configured secret value: URLs, the SMTP password, the API key, database passwords."""
        values = [self.slack_webhook_url, self.webhook_url, self.heartbeat_url, *self.extra_secrets]
        if self.smtp is not None:
            values.append(self.smtp.password)
        return [v for v in values if v]


def _url(name: str) -> str | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # the value may be a secret: name the setting, never echo it
        raise ConfigError(f"{name} is not an http(s) URL; set it to the full URL the service gave you, or unset it")
    return raw


def _number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:
        raise ConfigError(f"{name}={raw!r} is not a number >= {minimum:g}; set e.g. {default:g}, or unset it")
    return value


def _smtp() -> SmtpSettings | None:
    host = os.environ.get("EMBED_ALERT_SMTP_HOST", "").strip()
    if not host:
        return None
    tls = os.environ.get("EMBED_ALERT_SMTP_TLS", "").strip().lower() or "starttls"
    if tls not in ("starttls", "ssl", "none"):
        raise ConfigError(f"EMBED_ALERT_SMTP_TLS={tls!r} is not known; use starttls (default), ssl or none")
    port = int(_number("EMBED_ALERT_SMTP_PORT", 465 if tls == "ssl" else 587, 1))
    recipients = tuple(a.strip() for a in os.environ.get("EMBED_ALERT_SMTP_TO", "").split(",") if a.strip())
    if not recipients:
        raise ConfigError(
            "EMBED_ALERT_SMTP_HOST is set but EMBED_ALERT_SMTP_TO is not; set the recipients (comma-separated)"
        )
    user = os.environ.get("EMBED_ALERT_SMTP_USER", "").strip() or None
    password = os.environ.get("EMBED_ALERT_SMTP_PASSWORD", "") or None
    if password and not user:
        raise ConfigError("EMBED_ALERT_SMTP_PASSWORD is set but EMBED_ALERT_SMTP_USER is not; set the user too")
    sender = os.environ.get("EMBED_ALERT_SMTP_FROM", "").strip() or user or f"embed-assets@{host}"
    if "@" not in sender:
        raise ConfigError(f"EMBED_ALERT_SMTP_FROM={sender!r} is not an address; set e.g. alerts@example.com")
    return SmtpSettings(host, port, tls, sender, recipients, user, password)  # type: ignore[arg-type]


def _environment_secrets() -> tuple[str, ...]:
    """Secrets of the rest of the project that a message must never carry, even inside an error text."""
    values = [os.environ.get("OPENAI_API_KEY", "").strip()]
    for name in ("EMBED_DATABASE_URL", "EMBED_DAGSTER_DATABASE_URL"):
        values.append(_url_password(os.environ.get(name, "").strip()))
    return tuple(v for v in values if v)


def _url_password(url: str) -> str | None:
    if not url:
        return None
    try:
        return make_url(libpq_url(url)).password
    except Exception:  # an unparsable URL: the whole value is the secret
        return url


def alert_settings() -> AlertSettings:
    """Read EMBED_ALERT_* and EMBED_HEARTBEAT_URL (at tick or check time, never at import)."""
    return AlertSettings(
        slack_webhook_url=_url("EMBED_ALERT_SLACK_WEBHOOK_URL"),
        webhook_url=_url("EMBED_ALERT_WEBHOOK_URL"),
        smtp=_smtp(),
        heartbeat_url=_url("EMBED_HEARTBEAT_URL"),
        digest_minutes=_number("EMBED_ALERT_DIGEST_MINUTES", DEFAULT_DIGEST_MINUTES, 0),
        extra_secrets=_environment_secrets(),
    )
