"""Figure 1 and 1b: replacing one 1,000-chunk recording in a table that already holds N vectors, through
the product's write code, against raw binary COPY into the same table (the floor) and into a table with
no index; then the same insert under each index strategy. Vectors are random unit vectors: fine for
write cost (HNSW work per insert does not depend on meaning), useless for recall (see search.py)."""

from __future__ import annotations

import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from embed_assets.lib.chunking import Chunk
from embed_assets.lib.db.migrations import migrate
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.store import plan_embeddings, write_chunk_plan, write_vectors
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.bench.report import Figure, Report

DIM = 1536
MODEL = "bench-1536"
PER_RECORDING = 1000


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _copy_rows(conn: psycopg.Connection, table: str, rid: str, vecs: np.ndarray, start: int = 0) -> None:
    with conn.cursor().copy(
        sql.SQL(
            "COPY {} (recording_id, model, chunk_index, content_hash, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ).format(sql.Identifier(*table.split(".")))
    ) as copy:
        copy.set_types(["text", "text", "int4", "text", "vector"])
        for i, v in enumerate(vecs):
            copy.write_row((rid, MODEL, start + i, f"h{rid}-{start + i}", v))


def _recording(conn: psycopg.Connection, rid: str, n: int) -> None:
    """A source recording with n one-segment... chunk rows (the product's write path checks its plan)."""
    upsert_transcript(conn, Transcript(rid, (Segment("A", f"bench {rid}"),)))
    src_hash = conn.execute(
        "SELECT content_hash FROM embed_assets.recordings WHERE recording_id = %s", (rid,)
    ).fetchone()[0]
    chunks = [Chunk(i, f"{rid} chunk {i}", 0, 0, None, None, ("A",), 5) for i in range(n)]
    write_chunk_plan(conn, rid, MODEL, src_hash, "bench", chunks)


def prepare(url: str, n_vectors: int, rng: np.random.Generator, progress) -> None:
    """A fresh schema holding n_vectors vectors (in 1,000-chunk recordings) and a default HNSW index."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, DIM)
        register_vector(conn)
        conn.execute("DROP INDEX embed_assets.chunk_vectors_hnsw_idx")
        for r in range(n_vectors // PER_RECORDING):
            rid = f"base-{r:05d}"
            conn.execute(
                "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
                (rid,),
            )
            _copy_rows(conn, "embed_assets.chunk_vectors", rid, unit_vectors(rng, PER_RECORDING))
            if r % 10 == 9:
                progress(f"loaded {(r + 1) * PER_RECORDING:,} / {n_vectors:,} vectors")
        conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.perf_counter()
        conn.execute(
            "CREATE INDEX chunk_vectors_hnsw_idx ON embed_assets.chunk_vectors USING hnsw (embedding vector_cosine_ops)"
        )
        progress(f"built the HNSW index over {n_vectors:,} vectors in {time.perf_counter() - started:.1f}s")
        conn.execute("VACUUM ANALYZE embed_assets.chunk_vectors")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def write_path(url: str, n_vectors: int, report: Report, rng: np.random.Generator, progress, reps: int = 3) -> None:
    """Floor and product alternate (reps times each; medians), so cache and index growth hit both alike."""
    vecs = unit_vectors(rng, PER_RECORDING)
    floors, products, smalls = [], [], []
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        for rep in range(reps):
            # floor: raw binary COPY of the same 1,000 rows into the same indexed table, in one transaction
            rid = f"floor-{rep}"
            conn.execute(
                "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
                (rid,),
            )
            with conn.transaction():
                floors.append(_timed(lambda rid=rid: _copy_rows(conn, "embed_assets.chunk_vectors", rid, vecs)))
            # the product: a recording with 1,000 chunks, its vectors written through write_vectors
            for batch, out in ((100, products), (5, smalls)):
                rid = f"product-{batch}-{rep}"
                _recording(conn, rid, PER_RECORDING)
                plan = plan_embeddings(conn, rid, MODEL)
                rows = {c.chunk_index: (c.content_hash, vecs[c.chunk_index]) for c in plan.to_embed}
                out.append(
                    _timed(
                        lambda plan=plan, rows=rows, batch=batch: write_vectors(
                            conn, plan, rows, insert_batch_size=batch, statement_timeout_ms=600_000
                        )
                    )
                )
            progress(
                f"write path rep {rep + 1}/{reps}: floor {floors[-1]:.2f}s, product {products[-1]:.2f}s, "
                f"small batch {smalls[-1]:.2f}s"
            )
        # no index at all: what the rows cost without HNSW maintenance
        conn.execute("CREATE TEMP TABLE plain (LIKE embed_assets.chunk_vectors INCLUDING DEFAULTS)")
        unindexed = _timed(lambda: _copy_rows(conn, "plain", "plain", vecs))
    floor = float(np.median(floors))
    name = f"write_1000x{DIM}_into_{n_vectors}"
    report.add(Figure(f"{name}_hnsw_product", float(np.median(products)), "s", floor, "raw COPY same table"))
    report.add(Figure(f"{name}_hnsw_small_batch", float(np.median(smalls)), "s", floor, "raw COPY same table"))
    report.add(
        Figure(
            f"write_1000x{DIM}_unindexed_copy",
            unindexed,
            "s",
            floor,
            "raw COPY same table",
            note="no index: the client's share",
        )
    )


STRATEGIES: dict[str, tuple[str, str]] = {
    # name: (index DDL, note)
    "vector_hnsw_m16_ef64": ("USING hnsw (embedding vector_cosine_ops)", "pgvector default"),
    "halfvec_hnsw": (f"USING hnsw ((embedding::halfvec({DIM})) halfvec_cosine_ops)", "half-precision index"),
    "bit_hnsw_rerank": (
        f"USING hnsw ((binary_quantize(embedding)::bit({DIM})) bit_hamming_ops)",
        "binary quantized + exact re-rank",
    ),
    "vector_hnsw_m8_ef32": ("USING hnsw (embedding vector_cosine_ops) WITH (m = 8, ef_construction = 32)", ""),
}


def _latency(conn: psycopg.Connection, name: str, rng: np.random.Generator, n: int = 60) -> tuple[float, float]:
    """p50/p95 ms of a k=10 search shaped like the product's (re-rank for the quantized index)."""
    ddl = STRATEGIES[name][0]
    if "bit_hamming_ops" in ddl:
        inner = f"binary_quantize(embedding)::bit({DIM}) <~> binary_quantize(%(q)s::vector({DIM}))"
        limit = 100
    elif "halfvec" in ddl:
        inner, limit = f"embedding::halfvec({DIM}) <=> %(q)s::halfvec({DIM})", 10
    else:
        inner, limit = "embedding <=> %(q)s", 10
    query = (
        f"SELECT recording_id, chunk_index FROM (SELECT recording_id, chunk_index, embedding "  # noqa: S608
        f"FROM embed_assets.chunk_vectors "
        f"ORDER BY {inner} LIMIT {limit}) c ORDER BY embedding <=> %(q)s LIMIT 10"
    )
    times = []
    for q in unit_vectors(rng, n):
        with conn.transaction():
            conn.execute("SET LOCAL hnsw.ef_search = 100")
            started = time.perf_counter()
            conn.execute(query, {"q": q}).fetchall()
            times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.95)] * 1000


def index_strategies(url: str, n_vectors: int, report: Report, rng: np.random.Generator, progress) -> None:
    """Insert cost of one 1,000-vector recording into the N-vector table under each index strategy."""
    vecs = unit_vectors(rng, PER_RECORDING)
    baseline = None
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("SET maintenance_work_mem = '1GB'")
        for i, (name, (ddl, note)) in enumerate(STRATEGIES.items()):
            conn.execute("DROP INDEX IF EXISTS embed_assets.chunk_vectors_hnsw_idx")
            build = _timed(
                lambda ddl=ddl: conn.execute(
                    sql.SQL("CREATE INDEX chunk_vectors_hnsw_idx ON embed_assets.chunk_vectors " + ddl)
                )
            )
            rid = f"strategy-{i}"
            conn.execute(
                "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
                (rid,),
            )
            with conn.transaction():
                insert = _timed(lambda rid=rid: _copy_rows(conn, "embed_assets.chunk_vectors", rid, vecs))
            baseline = baseline or insert
            p50, p95 = _latency(conn, name, rng)
            progress(f"{name}: build {build:.1f}s, insert {insert:.2f}s, search p50 {p50:.1f} ms p95 {p95:.1f} ms")
            report.add(
                Figure(
                    f"index_{name}_search_p95_{n_vectors}",
                    p95,
                    "ms",
                    50.0,
                    "50 ms bar",
                    note="random vectors: latency only, recall is measured on real embeddings",
                )
            )
            report.add(Figure(f"index_{name}_insert_1000", insert, "s", baseline, "default vector HNSW", note=note))
            report.add(Figure(f"index_{name}_build_{n_vectors}", build, "s"))
        conn.execute("DROP INDEX IF EXISTS embed_assets.chunk_vectors_hnsw_idx")
        conn.execute(
            "CREATE INDEX chunk_vectors_hnsw_idx ON embed_assets.chunk_vectors USING hnsw (embedding vector_cosine_ops)"
        )
