"""Delivery: Slack incoming webhook, a generic JSON webhook (Discord's `content`, Teams/Slack-compatible
`text`), email over SMTP, the heartbeat ping, and the preflight's reachability probes. Dagster-free.

Sending never raises: each attempt is bounded in time, failures are retried a bounded number of times with
backoff and then reported as a `Delivery` whose error text has been through `redact` (URLs are secrets).
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

from embed_assets.lib.health.alert_settings import AlertSettings, SmtpSettings
from embed_assets.lib.health.messages import Message, redact, redact_message

DISCORD_LIMIT = 2000  # Discord refuses a `content` longer than this
USER_AGENT = "embed-assets-alerts/1"


@dataclass(frozen=True)
class Delivery:
    channel: str
    ok: bool
    attempts: int
    error: str | None = None  # redacted


@dataclass(frozen=True)
class Retry:
    attempts: int = 3
    backoff_s: float = 0.5  # waits backoff_s, 2 x backoff_s, ... between attempts
    timeout_s: float = 4.0  # per attempt: a tick waits at most ~13 s for a dead channel


def _post_json(url: str, payload: dict, timeout_s: float) -> None:
    body = json.dumps(payload).encode()
    req = urllib.request.Request(
        url, body, {"Content-Type": "application/json", "User-Agent": USER_AGENT}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (an http(s) URL, validated)
        resp.read()


def slack_payload(m: Message) -> dict:
    return {"text": f"*{m.title}*\n{m.text}"}


def webhook_payload(m: Message) -> dict:
    """Discord reads `content` (<= 2000 characters), Teams' and Slack-compatible hooks read `text`; the rest
    is the same message, structured, for anything else."""
    full = f"**{m.title}**\n{m.text}"
    content = full if len(full) <= DISCORD_LIMIT else full[: DISCORD_LIMIT - 2] + " …"
    return {"content": content, "text": f"{m.title}\n{m.text}", "title": m.title, "kind": m.kind, **m.fields}


def send_email(smtp: SmtpSettings, m: Message, timeout_s: float) -> None:
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = m.title, smtp.sender, ", ".join(smtp.recipients)
    msg.set_content(m.text)
    with _smtp_session(smtp, timeout_s) as server:
        server.send_message(msg)


def _smtp_session(smtp: SmtpSettings, timeout_s: float) -> smtplib.SMTP:
    if smtp.tls == "ssl":
        server: smtplib.SMTP = smtplib.SMTP_SSL(
            smtp.host, smtp.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        server = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s)
    try:
        server.ehlo()
        if smtp.tls == "starttls":
            server.starttls(context=ssl.create_default_context())
            server.ehlo()
        if smtp.user:
            server.login(smtp.user, smtp.password or "")
    except BaseException:
        server.close()
        raise
    return server


def _error_text(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    if isinstance(e, smtplib.SMTPResponseException):
        return f"SMTP {e.smtp_code} {e.smtp_error.decode(errors='replace')[:200]}"
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def _with_retries(channel: str, send: Callable[[], None], retry: Retry, secrets: list[str]) -> Delivery:
    error = None
    for attempt in range(1, retry.attempts + 1):
        try:
            send()
            return Delivery(channel, True, attempt)
        except Exception as e:  # any failure to deliver is reported, never raised
            error = redact(_error_text(e), secrets)
            if isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code not in (408, 429):
                return Delivery(channel, False, attempt, error)  # the URL or payload is wrong: retrying cannot help
            if attempt < retry.attempts:
                time.sleep(retry.backoff_s * 2 ** (attempt - 1))
    return Delivery(channel, False, retry.attempts, error)


def deliver(
    settings: AlertSettings, sends: list[tuple[str, Message]], retry: Retry = Retry()
) -> list[tuple[str, Message, Delivery]]:
    """Send each (channel, message), redacted first, all concurrently (a tick waits for one retry sequence,
    not one per message); one `Delivery` each. A channel that is not configured is reported undelivered."""
    secrets = settings.secrets()

    def sender(channel: str, m: Message) -> Callable[[], None]:
        clean = redact_message(m, secrets)
        if channel == "slack" and settings.slack_webhook_url:
            url = settings.slack_webhook_url
            return lambda: _post_json(url, slack_payload(clean), retry.timeout_s)
        if channel == "webhook" and settings.webhook_url:
            hook = settings.webhook_url
            return lambda: _post_json(hook, webhook_payload(clean), retry.timeout_s)
        if channel == "email" and settings.smtp:
            smtp = settings.smtp
            return lambda: send_email(smtp, clean, retry.timeout_s)
        raise KeyError(channel)

    out: list[tuple[str, Message, Delivery]] = []
    todo = []
    for channel, m in sends:
        try:
            todo.append((channel, m, sender(channel, m)))
        except KeyError:
            out.append((channel, m, Delivery(channel, False, 0, "not configured any more")))
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            futures = [(c, m, pool.submit(_with_retries, c, send, retry, secrets)) for c, m, send in todo]
            out += [(c, m, f.result()) for c, m, f in futures]
    return out


def ping_heartbeat(settings: AlertSettings, retry: Retry = Retry()) -> Delivery | None:
    """GET EMBED_HEARTBEAT_URL (healthchecks.io style: any 2xx is a ping); None when it is not set."""
    url = settings.heartbeat_url
    if not url:
        return None

    def get() -> None:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=retry.timeout_s) as resp:  # noqa: S310 (validated http(s) URL)
            resp.read()

    return _with_retries("heartbeat", get, retry, settings.secrets())


def _tcp(url: str, timeout_s: float) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout_s) as sock:
        if parts.scheme == "https":
            ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname).close()
    return "TCP connect" + (" + TLS" if parts.scheme == "https" else "")


def _head(url: str, timeout_s: float) -> str:
    """An HTTP HEAD: any HTTP answer proves the endpoint is there; nothing is posted."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (validated http(s) URL)
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    if status >= 500:
        raise OSError(f"HTTP {status} to HEAD")
    return f"HTTP {status} to HEAD"


def _smtp_noop(smtp: SmtpSettings, timeout_s: float) -> str:
    with _smtp_session(smtp, timeout_s) as server:
        code, _ = server.noop()
    return f"SMTP NOOP {code}" + (" after login" if smtp.user else "")


def reachability(settings: AlertSettings, timeout_s: float = 5.0) -> list[tuple[str, bool, str]]:
    """(channel, reachable, how) for each configured channel and the heartbeat, without sending a message or
    a ping: HEAD to the webhooks, EHLO/STARTTLS/login/NOOP to the SMTP server, a TCP (+TLS) connect to the
    heartbeat URL (a HEAD would count as a ping there)."""
    probes: list[tuple[str, Callable[[], str]]] = []
    if settings.slack_webhook_url:
        probes.append(("slack", lambda: _head(settings.slack_webhook_url or "", timeout_s)))
    if settings.webhook_url:
        probes.append(("webhook", lambda: _head(settings.webhook_url or "", timeout_s)))
    if settings.smtp:
        probes.append(("email", lambda: _smtp_noop(settings.smtp, timeout_s)))  # type: ignore[arg-type]
    if settings.heartbeat_url:
        probes.append(("heartbeat", lambda: _tcp(settings.heartbeat_url or "", timeout_s)))
    out = []
    for name, probe in probes:
        try:
            out.append((name, True, f"reachable ({probe()})"))
        except Exception as e:
            out.append((name, False, f"not reachable: {redact(_error_text(e), settings.secrets())}"))
    return out
