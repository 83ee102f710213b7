"""Real receivers on loopback for the alert tests (test support, not product code): an HTTP server that
plays a Slack incoming webhook, a generic JSON webhook and a heartbeat endpoint, and an SMTP server
(aiosmtpd). Each records what it received; the HTTP one can be told to fail the next N requests to a path (503), and
answers 404 under /gone (a revoked webhook)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """``with HttpReceiver() as r: r.url("/slack")``; ``r.received("/slack")`` lists the POSTs there."""

    requests: list[Received] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)  # path -> upcoming POST/GETs to answer with 503
    failed: int = 0

    def __enter__(self) -> HttpReceiver:
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with lock:
                    failing = method != "HEAD" and receiver.failing.get(self.path, 0) > 0
                    if failing:
                        receiver.failing[self.path] -= 1
                        receiver.failed += 1
                    else:
                        receiver.requests.append(Received(method, self.path, body))
                self.send_response(503 if failing else 404 if self.path.startswith("/gone") else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(b"ok")

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer("HEAD")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, path: str, n: int) -> None:
        """Answer the next ``n`` POST/GET requests to ``path`` with HTTP 503."""
        self.failing[path] = n

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def received(self, path: str, method: str = "POST") -> list[Received]:
        return [r for r in self.requests if r.path == path and r.method == method]


class SmtpReceiver:
    """aiosmtpd on a free loopback port; ``messages`` holds every email it accepted."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    def __enter__(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller

        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
                msg = message_from_bytes(envelope.original_content or envelope.content)
                msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                receiver.messages.append(msg)
                return "250 Message accepted for delivery"

        from embed_assets_tests.support.dagster_dev import free_port

        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def texts(self) -> list[str]:
        return [f"{m['Subject']}\n{m.get_payload(decode=True).decode()}" for m in self.messages]
