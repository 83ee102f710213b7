"""A shadow model's cost on the live write path: one 1,000-chunk recording of the ACTIVE model (1536 dims, default
`bit` index, N vectors stored) written through the product's write code (chunk plan, diff, vector write) with
nothing else running, and while another connection continuously backfills a registered shadow model (its own
partition and index, 3072 dims by default) through the same code. The two conditions alternate (medians), so the
active index's growth hits both alike.

The structural point is measured on its own: while only the shadow writes, the active model's partition gets no
row (pg_stat_user_tables.n_tup_ins) and its index does not grow (pg_relation_size); the shadow's partition
counter moving by the rows written shows the counters do see those writes. Vectors are random unit vectors:
fine for write cost, meaningless for recall."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from embed_assets.lib.chunking import Chunk
from embed_assets.lib.db.migrations import migrate
from embed_assets.lib.indexes import index_name
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.change import reindex, shadow
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.store import BatchSizer, plan_embeddings, write_chunk_plan, write_vectors
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.bench.report import Figure, Report
from embed_assets_tests.bench.write_path import (
    DIM,
    MODEL,
    PER_RECORDING,
    drop_index,
    load_vectors,
    register,
    unit_vectors,
)

SHADOW = "bench-shadow"
INSERT_BATCH, TIMEOUT_MS = 100, 30_000  # the product's defaults (ChunkEmbeddingsConfig), adaptive batches on


def _source(conn: psycopg.Connection, rid: str) -> str:
    """A source recording (its transcript row); its content hash, which chunk plans are written against."""
    upsert_transcript(conn, Transcript(rid, (Segment("A", f"bench {rid}"),)))
    return conn.execute("SELECT content_hash FROM embed_assets.recordings WHERE recording_id = %s", (rid,)).fetchone()[
        0
    ]


@dataclass
class Step:
    seconds: float  # chunk plan + diff + vector write
    write_s: float  # write_vectors alone


def write_recording(conn: psycopg.Connection, rid: str, src_hash: str, model: str, vecs: np.ndarray) -> Step:
    """What the two assets do for one recording and one model, minus the provider: the chunk plan
    (transcript_chunks), the diff against stored vectors and the vector write (chunk_embeddings)."""
    started = time.perf_counter()
    chunks = [Chunk(i, f"{rid} {model} chunk {i}", 0, 0, None, None, ("A",), 5) for i in range(len(vecs))]
    write_chunk_plan(conn, rid, model, src_hash, "bench", chunks)
    plan = plan_embeddings(conn, rid, model)
    rows = {c.chunk_index: (c.content_hash, vecs[c.chunk_index]) for c in plan.to_embed}
    began = time.perf_counter()
    write_vectors(conn, plan, rows, insert_batch_size=INSERT_BATCH, statement_timeout_ms=TIMEOUT_MS, sizer=BatchSizer())
    ended = time.perf_counter()
    return Step(ended - started, ended - began)


class ShadowBackfill(threading.Thread):
    """A second connection writing the shadow model's vectors, recording after recording, while ``go`` is set."""

    def __init__(self, url: str, sources: list[tuple[str, str]], dim: int) -> None:
        super().__init__(daemon=True)
        self.url, self.sources, self.dim = url, sources, dim
        self.cond = threading.Condition()
        self.go = self.stop = False
        self.writing = False
        self.recordings = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = np.random.default_rng(1)
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                register_vector(conn)
                for rid, src_hash in self.sources:
                    vecs = unit_vectors(rng, PER_RECORDING, self.dim)  # the provider's answer, before the wait
                    with self.cond:
                        while not self.go and not self.stop:
                            if self.writing:
                                conn.execute("SELECT pg_stat_force_next_flush()")  # counters visible at once
                            self.writing = False
                            self.cond.notify_all()
                            self.cond.wait(0.05)
                        if self.stop:
                            return
                        self.writing = True
                        self.cond.notify_all()
                    write_recording(conn, rid, src_hash, SHADOW, vecs)
                    self.recordings += 1
                raise RuntimeError(f"the shadow backfill ran out of its {len(self.sources)} source recordings")
        except BaseException as e:  # surfaced by resume()/pause()
            self.error = e
        finally:
            with self.cond:
                self.writing, self.stop = False, True
                self.cond.notify_all()

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"shadow backfill failed: {self.error}") from self.error

    def resume(self) -> None:
        """Returns once the shadow is writing."""
        with self.cond:
            self.go = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.writing or self.stop)
        self._check()

    def pause(self) -> None:
        """Returns once the shadow finished the recording it was writing and is idle."""
        with self.cond:
            self.go = False
            self.cond.wait_for(lambda: not self.writing)
        self._check()

    def finish(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        self.join()


def _prepare(url: str, n_vectors: int, shadow_dim: int, rng: np.random.Generator, progress) -> tuple[str, str]:
    """Active bench model with n_vectors vectors and its default bit index; a registered shadow model. Partitions."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS embed_assets CASCADE")
        migrate(conn, DIM)
        register_vector(conn)
        active = register(conn)  # default index strategy: bit
        drop_index(conn, active)
        load_vectors(conn, n_vectors, rng, progress, "active vectors")
        started = time.perf_counter()
        reindex(conn, MODEL, "bit")
        progress(
            f"built the active model's bit index over {n_vectors:,} vectors in {time.perf_counter() - started:.1f}s"
        )
        reg = shadow(conn, resolve_model("openai", SHADOW, shadow_dim))  # its own partition and default (bit) index
        assert not reg.active and reg.partition != active
        conn.execute("VACUUM ANALYZE embed_assets.chunk_vectors")
    return active, reg.partition


def _snapshot(conn: psycopg.Connection, partition: str) -> tuple[int, int, int]:
    """(index bytes, heap bytes, rows inserted ever) of a model's partition."""
    conn.execute("SELECT pg_stat_force_next_flush()")  # this connection's own counters
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        """SELECT pg_relation_size(format('embed_assets.%%I', %(i)s::text)::regclass),
                  pg_relation_size(format('embed_assets.%%I', %(p)s::text)::regclass),
                  coalesce((SELECT n_tup_ins FROM pg_stat_user_tables
                            WHERE schemaname = 'embed_assets' AND relname = %(p)s::text), 0)""",
        {"i": index_name(partition), "p": partition},
    ).fetchone()


def shadow_write_cost(
    url: str,
    n_vectors: int,
    report: Report,
    rng: np.random.Generator,
    progress,
    shadow_dim: int = 3072,
    reps: int = 5,
    warmup_s: float = 0.5,
    shadow_only: int = 3,
) -> None:
    active, shadow_part = _prepare(url, n_vectors, shadow_dim, rng, progress)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        mine = [(f"active-{i:03d}", _source(conn, f"active-{i:03d}")) for i in range(2 * reps)]
        theirs = [(f"shadow-{i:04d}", _source(conn, f"shadow-{i:04d}")) for i in range(40 * reps + 10 * shadow_only)]
    backfill = ShadowBackfill(url, theirs, shadow_dim)
    backfill.start()
    alone: list[Step] = []
    busy: list[Step] = []
    shadow_busy_recordings, shadow_busy_s = 0, 0.0
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            for rep in range(reps):
                for condition in ("alone", "busy") if rep % 2 == 0 else ("busy", "alone"):
                    rid, src_hash = mine.pop(0)
                    vecs = unit_vectors(rng, PER_RECORDING)
                    if condition == "alone":
                        alone.append(write_recording(conn, rid, src_hash, MODEL, vecs))
                        continue
                    before, began = backfill.recordings, time.perf_counter()
                    backfill.resume()
                    time.sleep(warmup_s)  # the shadow in the middle of its write when ours starts
                    busy.append(write_recording(conn, rid, src_hash, MODEL, vecs))
                    backfill.pause()
                    shadow_busy_recordings += backfill.recordings - before
                    shadow_busy_s += time.perf_counter() - began
                progress(
                    f"rep {rep + 1}/{reps}: active write alone {alone[-1].write_s:.2f}s "
                    f"(step {alone[-1].seconds:.2f}s), "
                    f"during the shadow backfill {busy[-1].write_s:.2f}s (step {busy[-1].seconds:.2f}s); "
                    f"shadow recordings so far {backfill.recordings}"
                )
            # the structural point: only the shadow writes between the two snapshots
            a0, s0 = _snapshot(conn, active), _snapshot(conn, shadow_part)
            before = backfill.recordings
            began = time.perf_counter()
            backfill.resume()
            while backfill.recordings - before < shadow_only and backfill.error is None:
                time.sleep(0.05)
            backfill.pause()
            shadow_alone_s = time.perf_counter() - began
            shadow_alone = backfill.recordings - before
            a1, s1 = _snapshot(conn, active), _snapshot(conn, shadow_part)
    finally:
        backfill.finish()
    if backfill.error is not None:
        raise RuntimeError(f"shadow backfill failed: {backfill.error}") from backfill.error
    write_a, write_b = statistics.median(s.write_s for s in alone), statistics.median(s.write_s for s in busy)
    step_a, step_b = statistics.median(s.seconds for s in alone), statistics.median(s.seconds for s in busy)
    progress(
        f"active partition {active}: index {a0[0]:,} -> {a1[0]:,} bytes, heap {a0[1]:,} -> {a1[1]:,} bytes, "
        f"n_tup_ins {a0[2]:,} -> {a1[2]:,}; shadow partition {shadow_part}: index {s0[0]:,} -> {s1[0]:,} bytes, "
        f"n_tup_ins {s0[2]:,} -> {s1[2]:,} ({shadow_alone} recordings in {shadow_alone_s:.1f}s)"
    )
    name = f"models_active_write_1000x{DIM}_into_{n_vectors}"
    cpu = (
        "2-core machine: the shadow's backend and its client compete with the active write for CPU (and both "
        "write WAL), so the ratio shows that contention; the active's partition and index are not shared"
    )
    report.add(Figure(f"{name}_alone", write_a, "s", note=f"write_vectors, median of {reps}, bit index"))
    report.add(
        Figure(
            f"{name}_during_shadow_backfill",
            write_b,
            "s",
            write_a,
            "the same write with nothing else running",
            note=f"a {shadow_dim}-dim shadow model backfilling on another connection; {cpu}",
        )
    )
    report.add(
        Figure(
            f"models_shadow_backfill_write_ratio_{n_vectors}",
            write_b / write_a,
            "x",
            note=f"(b)/(a): active write_vectors during a {shadow_dim}-dim shadow backfill / alone, median of {reps}; "
            + cpu,
        )
    )
    report.add(
        Figure(
            f"models_shadow_backfill_step_ratio_{n_vectors}",
            step_b / step_a,
            "x",
            note=f"(b)/(a) of the whole recording (chunk plan, diff, vector write): {step_b:.2f}s / {step_a:.2f}s; the "
            "chunk rows share one table (and its full-text GIN index) across models",
        )
    )
    report.add(
        Figure(
            f"models_shadow_backfill_vectors_per_s_{shadow_dim}",
            shadow_busy_recordings * PER_RECORDING / shadow_busy_s if shadow_busy_s else 0.0,
            "vectors/s",
            higher_is_better=True,
            note=f"the shadow's own rate while the active model writes too ({shadow_busy_recordings} recordings); "
            f"alone: {shadow_alone * PER_RECORDING / shadow_alone_s:.0f}/s",
        )
    )
    report.add(
        Figure(
            "models_active_index_growth_during_shadow_only",
            a1[0] - a0[0],
            "bytes",
            note=f"pg_relation_size of {index_name(active)} before/after {shadow_alone} shadow recordings "
            f"({a0[0]:,} bytes); the shadow's index grew {s1[0] - s0[0]:,} bytes",
        )
    )
    report.add(
        Figure(
            "models_active_rows_inserted_during_shadow_only",
            a1[2] - a0[2],
            "rows",
            note=f"pg_stat_user_tables.n_tup_ins of {active}; the shadow's partition {shadow_part}: "
            f"+{s1[2] - s0[2]:,} rows (the counters do see the shadow's writes)",
        )
    )
