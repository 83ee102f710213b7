"""Search recall@10 and latency per index strategy, on real embeddings: the local MiniLM model over
paragraphs of real English (the docstrings of Python's standard library, on every machine). Random
vectors would make recall meaningless (HNSW recall 0.06-0.4 seen on them here)."""

from __future__ import annotations

import ast
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from embed_assets_tests.bench.report import Figure, Report

DIM = 384


def corpus(n: int) -> list[str]:
    """Up to n distinct paragraphs (20-120 words) from the standard library's docstrings."""
    root = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node) or ""
                for para in doc.split("\n\n"):
                    words = para.split()
                    if 20 <= len(words) <= 120:
                        seen.setdefault(" ".join(words), None)
                        if len(seen) >= n:
                            return list(seen)
    return list(seen)


STRATEGIES = {
    "vector_hnsw": ("USING hnsw (embedding vector_cosine_ops)", "embedding <=> %(q)s"),
    "halfvec_hnsw": (
        f"USING hnsw ((embedding::halfvec({DIM})) halfvec_cosine_ops)",
        f"embedding::halfvec({DIM}) <=> %(q)s::halfvec({DIM})",
    ),
    "bit_hnsw_rerank": (
        f"USING hnsw ((binary_quantize(embedding)::bit({DIM})) bit_hamming_ops)",
        f"binary_quantize(embedding)::bit({DIM}) <~> binary_quantize(%(q)s)",
    ),
}


def recall_and_latency(url: str, n_docs: int, n_queries: int, report: Report, progress) -> None:
    from embed_assets.lib.embedders import LocalEmbedderConfig

    texts = corpus(n_docs + n_queries)
    n_queries = min(n_queries, len(texts) // 5)  # the corpus may be smaller than asked: keep 80% as docs
    docs, queries = texts[: len(texts) - n_queries], texts[len(texts) - n_queries :]
    n_docs = len(docs)
    progress(f"embedding {len(texts):,} real paragraphs with all-MiniLM-L6-v2")
    model = LocalEmbedderConfig(batch_size=64).build()
    started = time.perf_counter()
    doc_vecs = model.embed(docs, [0] * len(docs)).vectors
    query_vecs = model.embed(queries, [0] * len(queries)).vectors
    progress(f"embedded in {time.perf_counter() - started:.0f}s")
    exact = [set(np.argsort(-(doc_vecs @ q))[:10].tolist()) for q in query_vecs]
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS bench_search")
        conn.execute(sql.SQL("CREATE TABLE bench_search (id int PRIMARY KEY, embedding vector({}))").format(DIM))
        with conn.cursor().copy("COPY bench_search (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector"])
            for i, v in enumerate(doc_vecs):
                copy.write_row((i, v))
        conn.execute("SET maintenance_work_mem = '1GB'")
        for name, (ddl, distance) in [*STRATEGIES.items(), ("bit_hnsw_rerank200", STRATEGIES["bit_hnsw_rerank"])]:
            conn.execute("DROP INDEX IF EXISTS bench_search_idx")
            conn.execute(sql.SQL("CREATE INDEX bench_search_idx ON bench_search " + ddl))
            conn.execute("ANALYZE bench_search")
            if name.startswith("bit_hnsw_rerank"):  # hamming candidates, re-ranked by exact cosine
                candidates = 200 if name.endswith("200") else 100
                query = (
                    f"SELECT id FROM (SELECT id, embedding FROM bench_search ORDER BY {distance} LIMIT {candidates}) c "  # noqa: S608
                    "ORDER BY embedding <=> %(q)s LIMIT 10"
                )
            else:
                query = f"SELECT id FROM bench_search ORDER BY {distance} LIMIT 10"  # noqa: S608
            latencies, hits = [], 0
            for q, truth in zip(query_vecs, exact, strict=True):
                with conn.transaction():
                    conn.execute("SET LOCAL hnsw.ef_search = 200")
                    started = time.perf_counter()
                    got = {r[0] for r in conn.execute(query, {"q": q})}  # noqa: S608 (constant SQL)
                    latencies.append(time.perf_counter() - started)
                hits += len(got & truth)
            recall = hits / (10 * len(query_vecs))
            p50 = statistics.median(latencies) * 1000
            p95 = statistics.quantiles(latencies, n=20)[-1] * 1000
            report.add(Figure(f"search_{name}_recall_at_10_{n_docs}", recall, "", 1.0, "exact search", True))
            report.add(Figure(f"search_{name}_p50_{n_docs}", p50, "ms"))
            report.add(Figure(f"search_{name}_p95_{n_docs}", p95, "ms"))
