"""Retrieval: quality on the development set (`make eval`'s figures) and the cost of hybrid search at scale.

- Quality: recall@1/3/5/10 and MRR per search mode, the reference recipe and random chunks, on the tune and
  held-out halves of ../shared/eval/qmsum-val (lib/search/evaluate.py).
- Hybrid latency: embed_search over N chunks (sample transcripts' text, so full text behaves as on calls;
  random unit vectors, which is fine for latency but not for recall: recall is measured above).
- Write cost of the full-text index: 1,000 chunk rows COPYed into an N-row `chunks` table with the stored
  tsvector column and its GIN index, against the same table without them.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import psycopg

from embed_assets.lib.db.connection import register_vector_types
from embed_assets.lib.db.migrations import migrate
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.registry import ensure_models
from embed_assets.lib.store import CHUNK_COLUMNS
from embed_assets_tests.bench.report import Figure, Report

DEV_SET = Path(__file__).resolve().parents[3] / "shared" / "eval" / "qmsum-val"
DIM = 384
PER_RECORDING = 100


def dev_set_quality(report: Report, progress, dataset: Path = DEV_SET) -> None:
    from embed_assets.evaluation import run_eval

    if not (dataset / "queries.jsonl").is_file():
        progress(f"no development set at {dataset}: retrieval quality not measured")
        return
    result = run_eval(dataset / "queries.jsonl", dataset / "meetings", progress)
    for method, splits in result.methods.items():
        for split, m in splits.items():
            key = f"retrieval_{method.replace(' ', '_')}_{split.replace('-', '_')}"
            for k in (1, 5):
                report.add(Figure(f"{key}_recall_at_{k}", m[f"recall@{k}"], "share", higher_is_better=True))
            report.add(Figure(f"{key}_mrr", m["mrr"], "mrr", higher_is_better=True))
    for mode, lat in result.latency_ms.items():
        report.add(Figure(f"retrieval_dev_set_{mode}_p95", lat["p95"], "ms", note="within one meeting"))


def _texts(n: int) -> list[tuple[str, str, list[str]]]:
    """(content, content_hash, speakers) of n chunks cut from sample transcripts."""
    from embed_assets.lib.chunking import ChunkParams, chunk_segments
    from embed_assets.lib.sample import sample_transcripts
    from embed_assets.lib.tokenizers import token_counter

    counter = token_counter("minilm")
    out: list[tuple[str, str, list[str]]] = []
    seed = 0
    while len(out) < n:
        for t in sample_transcripts(20, seed=seed, long_call=False):
            for c in chunk_segments(t.segments, ChunkParams(200, 30), counter):
                out.append((c.content, c.content_hash + f"-{len(out)}", list(c.speakers)))
        seed += 1
    return out[:n]


def _fill(conn: psycopg.Connection, texts, rng: np.random.Generator, with_vectors: bool) -> None:
    from embed_assets.lib.db.rows import write_rows

    for r in range(len(texts) // PER_RECORDING):
        rid = f"h-{r:05d}"
        conn.execute(
            "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
            (rid,),
        )
        part = texts[r * PER_RECORDING : (r + 1) * PER_RECORDING]
        write_rows(
            conn,
            "chunks",
            CHUNK_COLUMNS,
            [(rid, "bench", i, c, i, i, None, None, sp, 150, h) for i, (c, h, sp) in enumerate(part)],
        )
        if with_vectors:
            v = rng.standard_normal((len(part), DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            write_rows(
                conn,
                "chunk_vectors",
                ("recording_id", "model", "chunk_index", "content_hash", "embedding"),
                [(rid, "bench", i, h, v[i]) for i, (_, h, _) in enumerate(part)],
                binary_types=("text", "text", "int4", "text", "vector"),
            )


def hybrid_at_scale(url: str, n_chunks: int, report: Report, rng: np.random.Generator, progress) -> None:
    from embed_assets.lib.search.query import search

    texts = _texts(n_chunks + 1000)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, DIM)
        register_vector_types(conn)
        ensure_models(conn, resolve_model("openai", "bench", DIM))  # active, its partition with the default bit index
        _fill(conn, texts[:n_chunks], rng, with_vectors=True)
        conn.execute("VACUUM ANALYZE embed_assets.chunks")
        conn.execute("VACUUM ANALYZE embed_assets.chunk_vectors")
        progress(f"{n_chunks:,} chunks with vectors loaded")
        queries = ["price increase next quarter", "what did Dana say about the renewal", "security review", "discount"]
        for mode in ("hybrid", "vector", "text"):
            times = []
            for i in range(60):
                qv = rng.standard_normal(DIM).astype(np.float32)
                started = time.perf_counter()
                search(conn, qv / np.linalg.norm(qv), queries[i % len(queries)], 5, None, mode)  # type: ignore[arg-type]
                times.append((time.perf_counter() - started) * 1000)
            p95 = float(np.percentile(times[5:], 95))
            report.add(Figure(f"search_{mode}_p95_{n_chunks}", p95, "ms", note="all recordings, k=5, bit index"))
        # Full-text index cost on the write path: the same 1,000 rows into the table with and without it.
        new = texts[n_chunks:]
        conn.execute("CREATE TABLE public.chunks_plain (LIKE embed_assets.chunks INCLUDING DEFAULTS)")
        conn.execute("ALTER TABLE public.chunks_plain DROP COLUMN fts")
        conn.execute(
            "INSERT INTO public.chunks_plain SELECT recording_id, model, chunk_index, content, first_seq, last_seq,"
            " start_s, end_s, speakers, token_count, content_hash FROM embed_assets.chunks"
        )
        conn.execute("ALTER TABLE public.chunks_plain ADD PRIMARY KEY (recording_id, model, chunk_index)")
        conn.execute("VACUUM ANALYZE public.chunks_plain")
        for rep in range(5):
            conn.execute(
                "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
                (f"w{rep}",),
            )
        timings: dict[str, list[float]] = {"with": [], "without": []}
        for rep in range(5):
            for kind, table in (("without", "public.chunks_plain"), ("with", "embed_assets.chunks")):
                rows = [(f"w{rep}", "bench", i, c, i, i, None, None, sp, 150, h) for i, (c, h, sp) in enumerate(new)]
                with conn.transaction():
                    started = time.perf_counter()
                    with conn.cursor().copy(f"COPY {table} ({', '.join(CHUNK_COLUMNS)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    timings[kind].append(time.perf_counter() - started)
                    raise psycopg.Rollback()
        plain, fts = statistics.median(timings["without"]), statistics.median(timings["with"])
        report.add(
            Figure(
                f"write_1000_chunks_into_{n_chunks}_with_fulltext",
                fts,
                "s",
                floor=plain,
                floor_name="same table without the tsvector column and GIN index",
                note="median of 5, rolled back",
            )
        )
        conn.execute("DROP TABLE public.chunks_plain")
