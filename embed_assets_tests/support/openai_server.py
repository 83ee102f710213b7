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
class Seen:
    requests: int = 0
    ok: int = 0
    inputs: int = 0
    tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    batch_tokens: list[int] = field(default_factory=list)
    auth_headers: set[str] = field(default_factory=set)


class FakeOpenAI:
    def __init__(self, api_key: str = "sk-test-0123456789abcdef", default_dim: int = 1536) -> None:
        self.api_key = api_key
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
        return self._send(h, 200, json.dumps(body).encode(), {})
