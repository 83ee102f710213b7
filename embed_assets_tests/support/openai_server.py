"""A loopback OpenAI-compatible embeddings server for tests (test support, not product code).

The real `openai` client talks HTTP to it. Each test scripts its faults; the server counts requests,
inputs and tokens, and returns deterministic unit vectors derived from each input's text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from embed_assets.lib.tokenizers import token_counter


def vector_for(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class Fault:
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: object | None = None  # JSON body; default: an OpenAI-style error
    raw: bytes | None = None  # a raw (possibly malformed) body instead
    delay_s: float = 0.0  # sleep before answering (past the client timeout: a timeout)
    drop: bool = False  # close the connection without answering
    dimension: int | None = None  # answer 200 but with vectors of this size
    drop_one: bool = False  # answer 200 with one vector missing


@dataclass
class Budget:
    """A provider's rate limits as OpenAI applies them: requests and tokens per minute, replenished
    continuously, with a bucket of ``burst_s`` seconds of budget. A request over either budget is answered
    429 at once with Retry-After (seconds) and retry-after-ms; every answer carries the x-ratelimit headers.
    Answered requests take ``latency_s`` (a real endpoint's round trip and compute)."""

    rpm: int | None = None
    tpm: int | None = None
    burst_s: float = 6.0
    latency_s: float = 0.0


class _Buckets:
    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.tokens = (budget.tpm or 0) / 60 * budget.burst_s
        self.requests = max(1.0, (budget.rpm or 0) / 60 * budget.burst_s)
        self.at = time.monotonic()

    def admit(self, tokens: int) -> tuple[float, dict[str, str]]:
        """Seconds to wait before this request would fit (0: admitted and charged), and the headers."""
        b, now = self.budget, time.monotonic()
        t_rate, r_rate = (b.tpm or 0) / 60, (b.rpm or 0) / 60
        if t_rate:
            self.tokens = min(t_rate * b.burst_s, self.tokens + (now - self.at) * t_rate)
        if r_rate:
            self.requests = min(max(1.0, r_rate * b.burst_s), self.requests + (now - self.at) * r_rate)
        self.at = now
        wait = 0.0
        if t_rate and tokens > self.tokens:
            wait = (tokens - self.tokens) / t_rate
        if r_rate and self.requests < 1:
            wait = max(wait, (1 - self.requests) / r_rate)
        if not wait:
            self.tokens -= tokens if t_rate else 0
            self.requests -= 1 if r_rate else 0
        headers = {}
        if t_rate:
            headers["x-ratelimit-limit-tokens"] = str(b.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, int(self.tokens)))
        if r_rate:
            headers["x-ratelimit-limit-requests"] = str(b.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, int(self.requests)))
        return wait, headers


@dataclass
class Seen:
    requests: int = 0
    ok: int = 0
    inputs: int = 0
    tokens: int = 0
    rate_limited: int = 0  # 429s answered because a request was over the budget
    batch_sizes: list[int] = field(default_factory=list)
    batch_tokens: list[int] = field(default_factory=list)
    auth_headers: set[str] = field(default_factory=set)


class FakeOpenAI:
    def __init__(
        self, api_key: str = "sk-test-0123456789abcdef", default_dim: int = 1536, budget: Budget | None = None
    ) -> None:
        self.api_key = api_key
        self._buckets = _Buckets(budget) if budget else None
        self.default_dim = default_dim
        self.seen = Seen()
        self.fault: Callable[[int], Fault | None] = lambda n: None  # request number (1-based) -> fault
        self.gate = threading.Event()  # requests wait here until the test opens it (open by default)
        self.gate.set()
        self._lock = threading.Lock()
        self._counter = token_counter("cl100k_base")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_requests(self, numbers: set[int], fault: Fault) -> None:
        self.fault = lambda n: fault if n in numbers else None

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", 0))
        payload = json.loads(h.rfile.read(length) or b"{}")
        with self._lock:
            self.seen.requests += 1
            n = self.seen.requests
            self.seen.auth_headers.add(h.headers.get("Authorization", ""))
        self.gate.wait(timeout=120)
        if h.path.rstrip("/") != "/v1/embeddings":
            return self._send(h, 404, json.dumps({"error": {"message": "not found"}}).encode(), {})
        if h.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = h.headers.get("Authorization", "")[-4:]
            body = {
                "error": {
                    "message": f"Incorrect API key provided: sk-****{given}.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
            return self._send(h, 401, json.dumps(body).encode(), {})
        fault = self.fault(n)
        if fault is not None and fault.dimension is None and not fault.drop_one:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.drop:
                h.close_connection = True
                h.connection.shutdown(2)
                return None
            body = (
                fault.raw
                if fault.raw is not None
                else json.dumps(
                    fault.body or {"error": {"message": f"injected {fault.status}", "type": "server_error"}}
                ).encode()
            )
            return self._send(h, fault.status, body, fault.headers)
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        dim = (fault.dimension if fault and fault.dimension else None) or payload.get("dimensions") or self.default_dim
        tokens = sum(self._counter.count_many(inputs))
        limit_headers: dict[str, str] = {}
        if self._buckets is not None:
            with self._lock:
                wait, limit_headers = self._buckets.admit(tokens)
                if wait:
                    self.seen.rate_limited += 1
            if wait:
                body = {
                    "error": {
                        "message": f"Rate limit reached for {payload.get('model')}: requested {tokens} tokens. "
                        f"Please try again in {wait:.3f}s.",
                        "type": "tokens",
                        "code": "rate_limit_exceeded",
                    }
                }
                headers = {
                    **limit_headers,
                    "retry-after": str(max(1, round(wait))),
                    "retry-after-ms": str(int(wait * 1000) + 1),
                }
                return self._send(h, 429, json.dumps(body).encode(), headers)
            if self._buckets.budget.latency_s:
                time.sleep(self._buckets.budget.latency_s)
        with self._lock:
            self.seen.ok += 1
            self.seen.inputs += len(inputs)
            self.seen.tokens += tokens
            self.seen.batch_sizes.append(len(inputs))
            self.seen.batch_tokens.append(tokens)
        as_b64 = payload.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            v = vector_for(text, dim)
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if as_b64 else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if fault is not None and fault.drop_one:
            data.pop()
        body = {
            "object": "list",
            "data": data,
            "model": payload.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return self._send(h, 200, json.dumps(body).encode(), limit_headers)
