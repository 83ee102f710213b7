"""The openai provider through the real `openai` client against a loopback server, and the local model."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr

from embed_assets.lib.embedders import LocalEmbedderConfig, OpenAIEmbedderConfig
from embed_assets.lib.embedders.openai import pack_requests, redact
from embed_assets.lib.errors import ConfigError, ProviderError, TransientProviderError
from embed_assets_tests.support.openai_server import Budget, FakeOpenAI, Fault, vector_for


def embedder(server: FakeOpenAI, key: str | None = None, **kw):
    cfg = OpenAIEmbedderConfig(base_url=server.base_url, backoff_base_s=0.01, backoff_max_s=0.05, **kw)
    return cfg.build(SecretStr(key or server.api_key))


def texts(n: int) -> tuple[list[str], list[int]]:
    return [f"chunk number {i} about renewals" for i in range(n)], [6] * n


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def test_vectors_come_back_in_order_decoded_from_base64(server: FakeOpenAI) -> None:
    t, n = texts(10)
    result = embedder(server).embed(t, n)
    assert result.vectors.shape == (10, 1536) and result.vectors.dtype == np.float32
    assert np.allclose(result.vectors[3], vector_for(t[3], 1536))
    assert result.requests == 1 and result.retries == 0 and result.tokens == server.seen.tokens


def test_requests_are_packed_to_input_and_token_limits(server: FakeOpenAI) -> None:
    t, _ = texts(25)
    result = embedder(server, max_inputs_per_request=10, max_tokens_per_request=70, max_concurrency=3).embed(
        t, [10] * 25
    )
    assert server.seen.batch_sizes and max(server.seen.batch_sizes) <= 7  # 70 tokens / 10 per input
    assert sum(server.seen.batch_sizes) == 25 and result.requests == len(server.seen.batch_sizes)
    assert np.allclose(result.vectors[24], vector_for(t[24], 1536))


@pytest.mark.parametrize(
    ("counts", "max_inputs", "max_tokens", "expected"),
    [([1] * 5, 2, 100, [2, 2, 1]), ([60, 50, 10], 10, 100, [1, 2]), ([200], 10, 100, [1]), ([], 2, 10, [])],
)
def test_pack_requests(counts: list[int], max_inputs: int, max_tokens: int, expected: list[int]) -> None:
    assert [len(r) for r in pack_requests(counts, max_inputs, max_tokens)] == expected


def test_reduced_dimensions_are_requested(server: FakeOpenAI) -> None:
    result = embedder(server, dimensions=256).embed(*texts(2))
    assert result.vectors.shape == (2, 256)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(429, headers={"retry-after": "0.05"}),
        Fault(500),
        Fault(503, headers={"retry-after-ms": "20"}),
        Fault(200, delay_s=1.5),  # past the client timeout
        Fault(drop=True),
    ],
    ids=["429-retry-after", "500", "503-retry-after-ms", "timeout", "dropped-connection"],
)
def test_transient_faults_are_retried(server: FakeOpenAI, fault: Fault) -> None:
    server.fail_requests({1, 2}, fault)
    result = embedder(server, request_timeout_s=0.5).embed(*texts(3))
    assert result.requests == 3 and result.retries == 2 and server.seen.ok == 1
    assert np.allclose(result.vectors[0], vector_for(texts(3)[0][0], 1536))


def test_retry_after_is_honoured(server: FakeOpenAI) -> None:
    server.fail_requests({1}, Fault(429, headers={"retry-after": "0.4"}))
    result = embedder(server).embed(*texts(1))
    assert result.retries == 1 and 0.4 <= result.backoff_s < 0.5  # longer than the 0.05 s backoff cap


def test_retry_after_beyond_the_cap_is_capped(server: FakeOpenAI) -> None:
    server.fail_requests({1}, Fault(429, headers={"retry-after": "3600"}))
    result = embedder(server, max_retry_after_s=0.1).embed(*texts(1))
    assert result.retries == 1 and result.backoff_s == pytest.approx(0.1)


def test_persistent_5xx_gives_up_after_max_attempts(server: FakeOpenAI) -> None:
    server.fault = lambda n: Fault(500)
    with pytest.raises(TransientProviderError, match="after 3 attempts"):
        embedder(server, max_attempts=3).embed(*texts(1))
    assert server.seen.requests == 3


def test_401_fails_at_once_naming_the_variable_and_never_the_key(server: FakeOpenAI) -> None:
    wrong = "sk-wrong-key-ABCDEFGH12345678"
    with pytest.raises(ProviderError) as info:
        embedder(server, key=wrong, max_concurrency=4).embed(
            *texts(50),
        )
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and "run worker" in message and "401" in message
    assert wrong not in message and "12345678" not in message and "5678" not in message
    assert server.seen.requests == 1  # no retry, and no further batches sent


def test_missing_key_is_a_config_error_without_any_request(server: FakeOpenAI) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIEmbedderConfig(base_url=server.base_url).build(None)
    assert server.seen.requests == 0


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (
            Fault(400, body={"error": {"message": "maximum context length is 8192 tokens"}}),
            "rejected the request as invalid",
        ),
        (Fault(404, body={"error": {"message": "model not found"}}), "EMBED_MODEL and OPENAI_BASE_URL"),
        (Fault(403), "may not use model"),
        (Fault(429, body={"error": {"message": "quota", "code": "insufficient_quota"}}), "out of quota"),
        (Fault(dimension=99), "returned 99-dim vectors"),
        (Fault(drop_one=True), "returned 2 vectors for 3 inputs"),
    ],
)
def test_permanent_errors_fail_at_once(server: FakeOpenAI, fault: Fault, match: str) -> None:
    server.fault = lambda n: fault
    with pytest.raises(ProviderError, match=match):
        embedder(server).embed(*texts(3))
    assert server.seen.requests == 1


def test_malformed_json_with_200_is_retried(server: FakeOpenAI) -> None:
    server.fail_requests({1}, Fault(200, raw=b'{"object": "list", "data": [{"embe'))
    result = embedder(server).embed(*texts(2))
    assert result.retries == 1 and result.vectors.shape == (2, 1536)


def test_malformed_body_is_retried_then_reported(server: FakeOpenAI) -> None:
    server.fault = lambda n: Fault(502, raw=b"<html>bad gateway")
    with pytest.raises(TransientProviderError, match="after 2 attempts"):
        embedder(server, max_attempts=2).embed(*texts(1))


def test_redact_removes_keys_and_key_shapes() -> None:
    assert "sk-live" not in redact("Incorrect API key provided: sk-live-abcdef123", None)
    assert redact("the key secret-value-xyz leaked", "secret-value-xyz") == "the key [redacted] leaked"


@pytest.fixture(scope="module")
def local():
    return LocalEmbedderConfig().build()


def test_local_model_gives_normalised_384_dim_vectors_with_meaning(local) -> None:
    sentences = [
        "Can you lower the price if we renew for three years?",
        "We would like a discount on a multi-year renewal contract.",
        "The export button crashes when the report is large.",
    ]
    result = local.embed(sentences, [12, 12, 12])
    v = result.vectors
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
    assert result.requests == 0


def test_unknown_local_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a bundled local model"):
        LocalEmbedderConfig(model="bge-large").build()


def test_rate_limit_waits_do_not_use_up_the_attempts() -> None:
    with FakeOpenAI() as s:  # refused 5 times with a wait named; only 2 attempts allowed for real failures
        s.fail_requests({1, 2, 3, 4, 5}, Fault(429, headers={"retry-after-ms": "10"}))
        result = embedder(s, max_attempts=2).embed(*texts(3))
    assert result.requests == 6 and result.rate_limited == 5 and s.seen.ok == 1


def test_requests_are_paced_to_the_providers_reported_budget() -> None:
    # 1,200,000 tokens/min with a 0.5 s bucket: 10,000 tokens at once, 20,000 more per second. 20 requests
    # of ~2,800 tokens, 4 in flight: unpaced, most of them would be refused.
    t = [("renewal pricing and the export bug " * 400) + str(i) for i in range(20)]
    with FakeOpenAI(budget=Budget(tpm=1_200_000, burst_s=0.5)) as s:
        emb = embedder(s, max_inputs_per_request=1, max_concurrency=4)
        result = emb.embed(t, [2_800] * 20)
    assert s.seen.ok == 20 and np.allclose(result.vectors[19], vector_for(t[19], 1536))
    assert result.rate_limited == s.seen.rate_limited <= 5  # the first answers teach the pace; then none
