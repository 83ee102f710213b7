"""The OpenAI provider (and any OpenAI-compatible endpoint) through the official `openai` client.

Requests are packed up to the provider's limits (inputs and tokens per request), sent concurrently, and
asked for base64 vectors (parsing JSON floats costs ~20x more client CPU). Retries are ours, not the
client's, so we can count them: 429 (rate limit), 5xx, timeouts and dropped connections back off
exponentially with full jitter and honour Retry-After; 400/401/403/404 and 429 `insufficient_quota` fail
at once with a message that names the cause and the fix. The key never appears in any message.
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, SecretStr

from embed_assets.lib.embedders.base import Answered, EmbedResult, Progress, attach_answered
from embed_assets.lib.errors import ConfigError, ProviderError, TransientProviderError
from embed_assets.lib.models import ModelSpec, resolve_model

_KEY_LIKE = re.compile(r"(sk-|key-|Bearer\s+)[A-Za-z0-9_*.\-]{4,}")


def redact(text: str, secret: str | None) -> str:
    """Remove the key itself and anything shaped like a key (providers echo masked keys in 401s)."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub(r"\1[redacted]", text)


class OpenAIEmbedderConfig(BaseModel):
    provider: Literal["openai"] = "openai"
    model: str = "text-embedding-3-small"
    dimensions: int | None = None
    base_url: str | None = None
    max_inputs_per_request: int = Field(2048, ge=1, le=2048)
    max_tokens_per_request: int = Field(300_000, ge=1, le=300_000)
    max_concurrency: int = Field(4, ge=1, le=64)
    request_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_retry_after_s: float = Field(300.0, ge=0)  # a Retry-After longer than this is capped
    # 429s that name a wait are the provider's flow control, not failures: they do not use up max_attempts
    # while the waits of one request stay within this budget.
    max_rate_limit_wait_s: float = Field(900.0, ge=0)

    def build(self, api_key: SecretStr | None) -> OpenAIEmbedder:
        return OpenAIEmbedder(self, resolve_model("openai", self.model, self.dimensions), api_key)


def pack_requests(token_counts: list[int], max_inputs: int, max_tokens: int) -> list[range]:
    """Consecutive index ranges, each within the per-request input and token limits."""
    batches: list[range] = []
    lo, tokens = 0, 0
    for i, n in enumerate(token_counts):
        if i > lo and (i - lo >= max_inputs or tokens + n > max_tokens):
            batches.append(range(lo, i))
            lo, tokens = i, 0
        tokens += n
    if lo < len(token_counts):
        batches.append(range(lo, len(token_counts)))
    return batches


def _retry_after_s(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _header_number(headers: Any, name: str) -> float | None:
    try:
        value = headers.get(name) if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class RateGate:
    """Paces the requests of one client (all its threads) to the provider's budgets, so a backfill runs at
    the budget instead of in 429 storms (`make bench`, seed): a 429's wait holds every thread, not only the
    one that got it; and when the provider reports its budget (OpenAI's x-ratelimit-remaining-tokens and
    x-ratelimit-limit-tokens, the account's view, shared by every process using the key), a request waits
    until its tokens fit instead of being sent to be refused. Without those headers only the 429 rule acts.
    What this client counts on is the lower of its own count (its reservations included) and the provider's
    report (other processes' spending included). Halving this client's share of the rate on each 429 (AIMD)
    cut the 429s by 4x but left the budget 1/3 unused with two runs (`make bench`, seed): not done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resume_at = 0.0  # monotonic: nothing is sent before this
        self._tokens: float | None = None  # tokens left in the provider's budget, as last reported, minus ours since
        self._rate = 0.0  # tokens per second the budget refills with
        self._at = 0.0

    def reserve(self, tokens: int) -> float:
        """Seconds to wait before sending a request of ``tokens`` (its tokens are counted as spent)."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._resume_at)
            if self._tokens is not None and self._rate:
                rate = self._rate
                available = self._tokens + (start - self._at) * rate
                if available < tokens:
                    start += (tokens - available) / rate
                    available = tokens
                self._tokens, self._at = available - tokens, start
                self._resume_at = start  # requests leave in order, each when its tokens fit
            return start - now

    def observe(self, headers: Any) -> None:
        limit = _header_number(headers, "x-ratelimit-limit-tokens")
        remaining = _header_number(headers, "x-ratelimit-remaining-tokens")
        with self._lock:
            now = time.monotonic()
            if limit and remaining is not None:
                self._rate = limit / 60
                # What is left now by our own count (its reservations included, some not yet sent), unless
                # the provider saw less (other processes spent it): the lower of the two.
                ours = None if self._tokens is None else self._tokens + (now - self._at) * self._rate
                self._tokens, self._at = remaining if ours is None else min(ours, remaining), now

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)


class OpenAIEmbedder:
    def __init__(self, config: OpenAIEmbedderConfig, spec: ModelSpec, api_key: SecretStr | None) -> None:
        import openai

        if api_key is None or not api_key.get_secret_value().strip():
            raise ConfigError(
                "OPENAI_API_KEY is not set. Set it in the environment of the Dagster code location and run "
                "worker (where `dagster dev`/the daemon/the run launcher start runs), not only in your shell"
            )
        self.spec = spec
        self.config = config
        self._secret = api_key.get_secret_value()
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=self._secret, base_url=config.base_url, max_retries=0, timeout=config.request_timeout_s
        )
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._gate = RateGate()

    def close(self) -> None:
        self._client.close()

    def _fail(self, what: str, e: BaseException) -> ProviderError:
        message = redact(getattr(e, "message", None) or str(e), self._secret)
        return ProviderError(f"{what} (HTTP {getattr(e, 'status_code', '?')}: {message})")

    def _request(self, texts: list[str], tokens: int, stats: EmbedResult) -> np.ndarray:
        oa = self._openai
        kwargs: dict[str, Any] = {"model": self.spec.name, "input": texts, "encoding_format": "base64"}
        if self.spec.dimension != self.spec.native_dimension:
            kwargs["dimensions"] = self.spec.dimension
        attempt, rate_limit_wait = 0, 0.0
        while True:
            attempt += 1
            paced = self._gate.reserve(tokens)
            if paced > 0:
                with self._lock:
                    stats.paced_s += paced
                time.sleep(paced)
            with self._lock:
                stats.requests += 1
            try:
                raw = self._client.embeddings.with_raw_response.create(**kwargs)
                self._gate.observe(raw.headers)
                return self._decode(raw.parse(), len(texts), stats)
            except oa.AuthenticationError as e:
                raise self._fail(
                    "the embedding endpoint rejected the API key: set a valid OPENAI_API_KEY in the "
                    "environment of the Dagster code location and run worker",
                    e,
                ) from None
            except oa.PermissionDeniedError as e:
                raise self._fail(
                    f"the API key may not use model {self.spec.name!r}; check the key's project", e
                ) from None
            except oa.NotFoundError as e:
                raise self._fail(
                    f"model {self.spec.name!r} or the endpoint was not found: check EMBED_MODEL and "
                    "OPENAI_BASE_URL (it must end in /v1 for most servers)",
                    e,
                ) from None
            except oa.RateLimitError as e:
                body = getattr(e, "body", None)
                code = body.get("code") if isinstance(body, dict) else None
                if code == "insufficient_quota":
                    raise self._fail("the account is out of quota: add credits or use another key", e) from None
                error: BaseException = e
                wait_hint = _retry_after_s(e.response)
                self._gate.observe(e.response.headers)
                if wait_hint is not None and rate_limit_wait + wait_hint <= self.config.max_rate_limit_wait_s:
                    attempt -= 1  # flow control within the budget: not a failed attempt
                    rate_limit_wait += wait_hint
                    with self._lock:
                        stats.rate_limited += 1
            except oa.InternalServerError as e:
                error, wait_hint = e, _retry_after_s(e.response)
            except (oa.APITimeoutError, oa.APIConnectionError) as e:
                error, wait_hint = e, None
            except (oa.APIResponseValidationError, ValueError, AttributeError, TypeError) as e:
                # A body that is not the embeddings JSON (a proxy's error page, a truncated response).
                error, wait_hint = e, None
            except oa.BadRequestError as e:
                raise self._fail("the endpoint rejected the request as invalid", e) from None
            except oa.APIStatusError as e:
                if e.status_code in (408, 409) or e.status_code >= 500:
                    error, wait_hint = e, _retry_after_s(e.response)
                else:
                    raise self._fail("the endpoint refused the request", e) from None
            if attempt >= self.config.max_attempts:
                raise TransientProviderError(
                    f"the embedding endpoint kept failing after {attempt} attempts "
                    f"(last: {type(error).__name__}: {redact(str(error), self._secret)[:300]}); "
                    "the partition will be retried with backoff"
                ) from None
            backoff = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
            delay = self._rng.uniform(0, backoff)  # full jitter
            if wait_hint is not None:
                delay = max(delay, min(wait_hint, self.config.max_retry_after_s))
                self._gate.pause(delay)  # every thread waits it out, not only this one
            with self._lock:
                stats.retries += 1
                stats.backoff_s += delay
            time.sleep(delay)

    def _decode(self, response: Any, n: int, stats: EmbedResult) -> np.ndarray:
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != n or [d.index for d in data] != list(range(n)):
            raise ProviderError(
                f"the endpoint returned {len(data)} vectors for {n} inputs; refusing to guess which is which"
            )
        out = np.empty((n, self.spec.dimension), dtype=np.float32)
        for row, d in enumerate(data):  # a malformed item raises ValueError/TypeError: retried as transient
            emb = d.embedding
            vec = (
                np.frombuffer(base64.b64decode(emb), dtype="<f4")
                if isinstance(emb, str)
                else np.asarray(emb, dtype=np.float32)
            )
            if vec.shape != (self.spec.dimension,):
                raise ProviderError(
                    f"the endpoint returned {vec.shape[0]}-dim vectors but {self.spec.model_id} needs "
                    f"{self.spec.dimension}; check EMBED_MODEL / EMBED_DIMENSIONS against the endpoint"
                )
            out[row] = vec
        usage = getattr(response, "usage", None)
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            with self._lock:
                stats.tokens += int(usage.prompt_tokens)
        return out

    def embed(self, texts: list[str], token_counts: list[int], progress: Progress | None = None) -> EmbedResult:
        started = time.perf_counter()
        too_long = [i for i, n in enumerate(token_counts) if n > self.spec.max_input_tokens]
        if too_long:
            raise ProviderError(
                f"{len(too_long)} input(s) exceed {self.spec.name}'s {self.spec.max_input_tokens}-token limit; "
                "lower chunk_tokens"
            )
        stats = EmbedResult(np.empty((len(texts), self.spec.dimension), dtype=np.float32))
        batches = pack_requests(token_counts, self.config.max_inputs_per_request, self.config.max_tokens_per_request)
        answered: list[range] = []  # requests answered (and billed) so far

        def run(r: range) -> None:
            stats.vectors[r.start : r.stop] = self._request(
                texts[r.start : r.stop], sum(token_counts[r.start : r.stop]), stats
            )
            with self._lock:
                answered.append(r)
            if progress:
                progress(len(r))

        try:
            if self.config.max_concurrency == 1 or len(batches) == 1:
                for r in batches:
                    run(r)
            else:
                pool = ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="embed")
                try:
                    for f in [pool.submit(run, r) for r in batches]:
                        f.result()
                finally:  # on the first failure, requests not yet started are cancelled, not sent
                    pool.shutdown(wait=True, cancel_futures=True)
        except Exception as e:
            # The requests answered before (or beside) the failing one were billed: the caller keeps their vectors.
            indexes = sorted(i for r in answered for i in r)
            self._finish(stats, [token_counts[i] for i in indexes], started)
            attach_answered(e, Answered(indexes, stats))
            raise
        return self._finish(stats, token_counts, started)

    @staticmethod
    def _finish(stats: EmbedResult, billed_counts: list[int], started: float) -> EmbedResult:
        if stats.tokens == 0:
            stats.tokens = sum(billed_counts)  # the endpoint reported no usage: fall back to our exact count
        stats.seconds = time.perf_counter() - started
        return stats
