"""Figures 2 and 3: the embedders against their floors on the same inputs and batch sizes."""

from __future__ import annotations

import base64
import time

import numpy as np
from pydantic import SecretStr

from embed_assets.lib.embedders import LocalEmbedderConfig, OpenAIEmbedderConfig
from embed_assets_tests.bench.report import Figure, Report
from embed_assets_tests.support.openai_server import FakeOpenAI


def texts(n: int) -> list[str]:
    return [f"chunk {i}: the customer asked about renewal pricing and the export bug in detail" for i in range(n)]


def provider_path(n: int, batch: int, report: Report, progress) -> None:
    import openai

    inputs = texts(n)
    with FakeOpenAI(default_dim=1536) as server:
        client = openai.OpenAI(api_key=server.api_key, base_url=server.base_url, max_retries=0)
        started = time.perf_counter()
        for lo in range(0, n, batch):  # the floor: a bare client, base64, numpy decode, one at a time
            resp = client.embeddings.create(
                model="text-embedding-3-small", input=inputs[lo : lo + batch], encoding_format="base64"
            )
            np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data])
        floor = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for lo in range(0, n, batch):  # the client's default path: it asks for base64 and decodes itself
            client.embeddings.create(model="text-embedding-3-small", input=inputs[lo : lo + batch])
        default = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for lo in range(0, n, batch):
            client.embeddings.create(
                model="text-embedding-3-small", input=inputs[lo : lo + batch], encoding_format="float"
            )
        floats = n / (time.perf_counter() - started)
        for concurrency in (1, 4):
            emb = OpenAIEmbedderConfig(
                base_url=server.base_url, max_inputs_per_request=batch, max_concurrency=concurrency
            ).build(SecretStr(server.api_key))
            started = time.perf_counter()
            emb.embed(inputs, [20] * n)
            ours = n / (time.perf_counter() - started)
            report.add(
                Figure(
                    f"provider_openai_embedder_c{concurrency}",
                    ours,
                    "chunks/s",
                    floor,
                    "bare client base64",
                    True,
                    "loopback server, 1536 dims",
                )
            )
        report.add(
            Figure("provider_bare_client_default_encoding", default, "chunks/s", floor, "bare client base64", True)
        )
        report.add(Figure("provider_bare_client_float_encoding", floats, "chunks/s", floor, "bare client base64", True))
    progress("provider path done")


def local_model(n: int, batch: int, report: Report, progress) -> None:
    inputs = texts(n)
    emb = LocalEmbedderConfig(batch_size=batch).build()
    emb.embed(inputs[:batch], [20] * batch)  # load the model outside the timing
    model = emb._model
    started = time.perf_counter()
    model.encode(inputs, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
    floor = n / (time.perf_counter() - started)
    started = time.perf_counter()
    emb.embed(inputs, [20] * n)
    ours = n / (time.perf_counter() - started)
    report.add(Figure("local_embedder", ours, "chunks/s", floor, "raw SentenceTransformer.encode", True))
    progress("local model done")
