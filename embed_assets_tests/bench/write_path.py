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
from embed_assets.lib.db.names import q
from embed_assets.lib.indexes import STRATEGIES as INDEXES
from embed_assets.lib.indexes import build_index, index_name
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.change import reindex
from embed_assets.lib.models.registry import ensure_models, find
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


def register(conn: psycopg.Connection, model: str = MODEL, dim: int = DIM) -> str:
    """A fresh store's bench model, registered and active (as a fresh install's first run does); its partition."""
    ensure_models(conn, resolve_model("openai", model, dim))
    reg = find(conn, model)
    assert reg is not None and reg.active
    return reg.partition


def drop_index(conn: psycopg.Connection, partition: str) -> None:
    conn.execute(q(conn, "DROP INDEX IF EXISTS {s}.{i}", i=sql.Identifier(index_name(partition))))


def load_vectors(conn: psycopg.Connection, n_vectors: int, rng: np.random.Generator, progress, what: str) -> None:
    """n_vectors random vectors of the bench model, in 1,000-vector recordings "base-NNNNN", by raw COPY."""
    for r in range(n_vectors // PER_RECORDING):
        rid = f"base-{r:05d}"
        conn.execute(
            "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
            (rid,),
        )
        _copy_rows(conn, "embed_assets.chunk_vectors", rid, unit_vectors(rng, PER_RECORDING))
        if r % 10 == 9:
            progress(f"loaded {(r + 1) * PER_RECORDING:,} / {n_vectors:,} {what}")


def prepare(url: str, n_vectors: int, rng: np.random.Generator, progress) -> None:
    """A fresh schema holding n_vectors vectors (in 1,000-chunk recordings) of the registered bench model, whose
    partition has pgvector's default HNSW (`vector` strategy, m=16, ef_construction=64)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, DIM)
        register_vector(conn)
        partition = register(conn)
        drop_index(conn, partition)  # loaded without the index, built once at the end
        load_vectors(conn, n_vectors, rng, progress, "vectors")
        started = time.perf_counter()
        reindex(conn, MODEL, "vector")  # the partition's index, and embed_search re-created for it
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


# figure name: (the product's strategy in lib/indexes.py, extra WITH options, note)
STRATEGIES: dict[str, tuple[str, str, str]] = {
    "vector_hnsw_m16_ef64": ("vector", "", "pgvector default"),
    "halfvec_hnsw": ("halfvec", "", "half-precision index"),
    "bit_hnsw_rerank": ("bit", "", "binary quantized + exact re-rank"),
    "vector_hnsw_m8_ef32": ("vector", "m = 8, ef_construction = 32", ""),
}


def _build(conn: psycopg.Connection, partition: str, name: str) -> None:
    """The partition's index as figure ``name``'s strategy, built by the product's code (the m=8 variant, which
    the product does not offer, is the product's DDL with the options appended)."""
    strategy, options, _ = STRATEGIES[name]
    with conn.transaction():
        if not options:
            build_index(conn, partition, strategy, DIM)
            return
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        drop_index(conn, partition)
        conn.execute(INDEXES[strategy].ddl(conn, partition, DIM) + sql.SQL(f" WITH ({options})"))


def _latency(
    conn: psycopg.Connection, partition: str, name: str, rng: np.random.Generator, n: int = 60
) -> tuple[float, float]:
    """p50/p95 ms of a k=10 search shaped like the product's (re-rank for the quantized index), on the
    model's partition with the index's own distance expression."""
    strategy = INDEXES[STRATEGIES[name][0]]
    limit = 100 if strategy.rerank else 10
    query = q(
        conn,
        "SELECT recording_id, chunk_index FROM (SELECT recording_id, chunk_index, embedding FROM {s}.{p} "  # noqa: S608
        f"ORDER BY {strategy.order_by(DIM)} LIMIT {limit}) c "
        "ORDER BY embedding OPERATOR({v}.<=>) %(q)s LIMIT 10",
        p=sql.Identifier(partition),
    )
    times = []
    for v in unit_vectors(rng, n):
        with conn.transaction():
            conn.execute("SET LOCAL hnsw.ef_search = 100")
            started = time.perf_counter()
            conn.execute(query, {"q": v}).fetchall()
            times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.95)] * 1000


def index_strategies(url: str, n_vectors: int, report: Report, rng: np.random.Generator, progress) -> None:
    """Insert cost of one 1,000-vector recording into the N-vector table under each index strategy (each the
    bench model's partition index, as `embed-assets model reindex` builds it)."""
    vecs = unit_vectors(rng, PER_RECORDING)
    baseline = None
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        partition = find(conn, MODEL).partition
        for i, (name, (_, _, note)) in enumerate(STRATEGIES.items()):
            build = _timed(lambda name=name: _build(conn, partition, name))
            rid = f"strategy-{i}"
            conn.execute(
                "INSERT INTO embed_assets.recordings (recording_id, content_hash, segment_count) VALUES (%s, 'x', 1)",
                (rid,),
            )
            with conn.transaction():
                insert = _timed(lambda rid=rid: _copy_rows(conn, "embed_assets.chunk_vectors", rid, vecs))
            baseline = baseline or insert
            p50, p95 = _latency(conn, partition, name, rng)
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
        reindex(conn, MODEL, "vector")  # back to prepare()'s index, embed_search matching it
