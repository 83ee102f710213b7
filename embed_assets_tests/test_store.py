"""Source loading, migrations and the vector write path against the real embedded Postgres."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psycopg
import pytest

from embed_assets.lib.chunking import ChunkParams
from embed_assets.lib.db.migrations import MIGRATIONS, migrate, schema_version, vector_dimension
from embed_assets.lib.models import resolve_model
from embed_assets.lib.pipeline import RecordingEmbedder, chunk_recording, embed_recording
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.store import SourceChangedError, plan_embeddings
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.openai_server import vector_for

SPEC = resolve_model("openai", "text-embedding-3-small", 384)
PARAMS = ChunkParams(40, 8)


class HashEmbedder:
    """A deterministic in-process embedder (text -> fixed unit vector) that counts what it is asked.
    Used where the provider is not under test; the provider paths are tested over HTTP elsewhere."""

    spec = SPEC

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts, token_counts, progress=None):
        from embed_assets.lib.embedders.base import EmbedResult

        self.calls.append(len(texts))
        vecs = np.stack([vector_for(t, 384) for t in texts]) if texts else np.empty((0, 384), np.float32)
        return EmbedResult(vecs, requests=1 if texts else 0, tokens=sum(token_counts))

    def close(self) -> None:
        pass


def transcript(rid: str, n: int = 30, variant: str = "") -> Transcript:
    return Transcript(
        rid,
        tuple(
            Segment(
                f"S{i % 2}",
                f"turn {i} {variant if i == n - 1 else ''} " + "lorem ipsum dolor " * 5,
                float(i),
                float(i) + 1,
            )
            for i in range(n)
        ),
    )


def state(conn: psycopg.Connection, rid: str) -> tuple[int, int, int]:
    """(chunks, vectors, chunks whose vector matches their text) of one recording."""
    return conn.execute(
        """SELECT (SELECT count(*) FROM embed_assets.chunks WHERE recording_id = %(r)s),
                  (SELECT count(*) FROM embed_assets.chunk_vectors WHERE recording_id = %(r)s),
                  (SELECT count(*) FROM embed_assets.transcript_chunks
                   WHERE recording_id = %(r)s AND embedding IS NOT NULL)""",
        {"r": rid},
    ).fetchone()


def run(conn: psycopg.Connection, rid: str, emb: HashEmbedder, batch: int = 50):
    chunk_recording(conn, rid, SPEC, PARAMS)
    return embed_recording(conn, rid, emb, insert_batch_size=batch, statement_timeout_ms=30_000)


def test_load_is_idempotent_and_detects_changes(conn: psycopg.Connection) -> None:
    t = transcript("r1")
    assert upsert_transcript(conn, t) == "loaded"
    before = conn.execute("SELECT updated_at FROM embed_assets.recordings").fetchone()[0]
    assert upsert_transcript(conn, t) == "unchanged"
    assert conn.execute("SELECT updated_at FROM embed_assets.recordings").fetchone()[0] == before
    assert upsert_transcript(conn, transcript("r1", 25)) == "changed"
    row = conn.execute("SELECT segment_count, updated_at > %s FROM embed_assets.recordings", (before,)).fetchone()
    assert row == (25, True)
    assert conn.execute("SELECT count(*), max(seq) FROM embed_assets.transcript_segments").fetchone() == (25, 24)


def test_migrations_are_idempotent_and_safe_from_two_processes(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS migrate_race")
        c.execute("CREATE DATABASE migrate_race")
    url = db_url.replace("/embed_assets?", "/migrate_race?")
    # ProcessPoolExecutor shuts down by joining; multiprocessing.Pool's terminate() can hang on exit.
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        applied = list(pool.map(_migrate, [url] * 4))
    assert sorted(v for a in applied for v in a) == [m.version for m in MIGRATIONS]  # each applied once
    with psycopg.connect(url, autocommit=True) as c:
        assert migrate(c, 384) == []
        assert schema_version(c) == len(MIGRATIONS) and vector_dimension(c) is None  # dimensions are per model


def _migrate(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as c:
        return migrate(c, 384)


def test_embed_then_rerun_makes_no_requests_and_no_writes(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1"))
    emb = HashEmbedder()
    first = run(conn, "r1", emb)
    n = first.chunks
    assert n > 5 and first.embedded == n and first.vectors_written == n and state(conn, "r1") == (n, n, n)
    second = run(conn, "r1", emb)
    assert (second.embedded, second.tokens, second.vectors_written, second.vectors_deleted) == (0, 0, 0, 0)
    assert second.cache_hits == n and emb.calls == [n]  # the provider was asked once, by the first run
    assert state(conn, "r1") == (n, n, n)


def test_changed_transcript_reembeds_only_changed_chunks(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1"))
    emb = HashEmbedder()
    n = run(conn, "r1", emb).chunks
    upsert_transcript(conn, transcript("r1", variant="CHANGED"))  # only the last turn differs
    again = run(conn, "r1", emb)
    assert 1 <= again.embedded <= 3 and again.vectors_deleted == again.embedded
    assert state(conn, "r1") == (again.chunks, again.chunks, again.chunks)
    # the stored vector of every chunk is the vector of its current text
    for content, emb_vec in conn.execute("SELECT content, embedding::text FROM embed_assets.transcript_chunks"):
        assert np.allclose(np.array(emb_vec.strip("[]").split(","), float), vector_for(content, 384), atol=1e-6)
    assert n == again.chunks


def test_identical_text_in_another_recording_is_a_cache_hit(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1"))
    upsert_transcript(conn, transcript("r2"))
    emb = HashEmbedder()
    n = run(conn, "r1", emb).chunks
    other = run(conn, "r2", emb)
    assert other.embedded == 0 and other.cache_hits == n and other.vectors_written == n
    assert state(conn, "r2") == (n, n, n)


def _many(conn: psycopg.Connection, ids: list[str], chunk: bool = True) -> None:
    """Short recordings whose chunks are all distinct (no text shared between them)."""
    for rid in ids:
        segments = tuple(Segment(f"S{i % 2}", f"{rid} turn {i} " + "lorem ipsum dolor " * 5) for i in range(6))
        upsert_transcript(conn, Transcript(rid, segments))
        if chunk:
            chunk_recording(conn, rid, SPEC, PARAMS)


def _window(conn: psycopg.Connection, emb, ids: list[str], window_inputs: int = 1000) -> RecordingEmbedder:
    return RecordingEmbedder(
        lambda: conn, emb, ids, window_inputs=window_inputs, insert_batch_size=50, statement_timeout_ms=30_000
    )


def test_short_recordings_share_provider_requests_and_are_written_each_on_its_own(conn) -> None:
    ids = [f"s{i}" for i in range(6)]
    _many(conn, ids)
    emb = HashEmbedder()
    embed = _window(conn, emb, ids)
    stats = [embed(rid) for rid in ids]
    total = sum(s.chunks for s in stats)
    assert emb.calls == [total]  # one call for all six, not six
    assert embed.totals.inputs == total and embed.totals.requests == 1
    assert embed.totals.tokens == sum(s.tokens for s in stats) > 0
    for rid, s in zip(ids, stats, strict=True):
        assert s.embedded == s.chunks == s.vectors_written and state(conn, rid) == (s.chunks,) * 3
    # the window is bounded by pending chunks: two recordings' worth per call
    for rid in ids:
        conn.execute("DELETE FROM embed_assets.chunk_vectors WHERE recording_id = %s", (rid,))
    emb2 = HashEmbedder()
    embed = _window(conn, emb2, ids, window_inputs=stats[0].chunks + 1)
    for rid in ids:
        embed(rid)
    assert len(emb2.calls) == 3 and sum(emb2.calls) == total


def test_the_same_text_twice_in_one_window_is_sent_once(conn) -> None:
    upsert_transcript(conn, transcript("t1"))
    upsert_transcript(conn, transcript("t2"))  # identical turns
    for rid in ("t1", "t2"):
        chunk_recording(conn, rid, SPEC, PARAMS)
    emb = HashEmbedder()
    embed = _window(conn, emb, ["t1", "t2"])
    first, second = embed("t1"), embed("t2")
    n = first.chunks
    assert emb.calls == [n] and (first.embedded, second.embedded, second.cache_hits) == (n, 0, n)
    assert state(conn, "t1") == state(conn, "t2") == (n, n, n)


def test_a_recording_that_cannot_be_planned_fails_on_its_own_turn_only(conn) -> None:
    _many(conn, ["a", "c"])
    _many(conn, ["b"], chunk=False)  # never chunked: it cannot be embedded
    emb = HashEmbedder()
    embed = _window(conn, emb, ["a", "b", "c"])
    a = embed("a")
    assert emb.calls == [a.chunks]  # the window stopped before b
    with pytest.raises(SourceChangedError, match="materialize transcript_chunks"):
        embed("b")
    c = embed("c")
    assert emb.calls == [a.chunks, c.chunks] and state(conn, "c") == (c.chunks,) * 3


def test_a_failed_provider_call_fails_one_recording_and_the_rest_are_embedded_later(conn) -> None:
    from embed_assets.lib.errors import TransientProviderError

    ids = ["p0", "p1", "p2"]
    _many(conn, ids)

    class FailsOnce(HashEmbedder):
        def embed(self, texts, token_counts, progress=None):
            if not self.calls:
                self.calls.append(-len(texts))
                raise TransientProviderError("503 from the provider after every attempt")
            return super().embed(texts, token_counts, progress)

    emb = FailsOnce()
    embed = _window(conn, emb, ids)
    with pytest.raises(TransientProviderError):
        embed("p0")
    assert state(conn, "p0")[1] == 0
    p1, p2 = embed("p1"), embed("p2")
    assert emb.calls[1:] == [p1.chunks + p2.chunks]  # p1 opened a new window with p2 in it
    assert state(conn, "p1") == (p1.chunks,) * 3 and state(conn, "p2") == (p2.chunks,) * 3


def test_a_recording_deleted_after_its_window_was_embedded_loses_nothing_else(conn) -> None:
    from embed_assets.lib.errors import RecordingDeletedError

    ids = ["d0", "d1", "d2"]
    _many(conn, ids)
    emb = HashEmbedder()
    embed = _window(conn, emb, ids)
    d0 = embed("d0")
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'd1'")
    with pytest.raises(RecordingDeletedError):
        embed("d1")
    d2 = embed("d2")
    assert len(emb.calls) == 1  # d2's vectors were paid for in d0's window and still written
    assert state(conn, "d0") == (d0.chunks,) * 3 and state(conn, "d2") == (d2.chunks,) * 3
    assert state(conn, "d1") == (0, 0, 0)


def test_small_insert_batches_write_the_same_rows(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1"))
    stats = run(conn, "r1", HashEmbedder(), batch=5)
    assert stats.insert_statements == -(-stats.chunks // 5)
    assert state(conn, "r1") == (stats.chunks,) * 3


def test_statement_timeout_rolls_back_the_whole_recording(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1", 200))
    chunk_recording(conn, "r1", SPEC, PARAMS)
    with pytest.raises(psycopg.errors.QueryCanceled):
        # 1 ms cannot fit a 200-row COPY into an HNSW index
        embed_recording(conn, "r1", HashEmbedder(), insert_batch_size=1000, statement_timeout_ms=1)
    n = state(conn, "r1")[0]
    assert state(conn, "r1") == (n, 0, 0)  # nothing half-written
    stats = embed_recording(conn, "r1", HashEmbedder(), insert_batch_size=5, statement_timeout_ms=30_000)
    assert state(conn, "r1") == (n, n, n) and stats.vectors_written == n


def test_two_concurrent_runs_of_one_recording_leave_one_copy(conn: psycopg.Connection, db_url: str) -> None:
    upsert_transcript(conn, transcript("r1", 120))
    chunk_recording(conn, "r1", SPEC, PARAMS)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                embed_recording(c, "r1", HashEmbedder(), insert_batch_size=7, statement_timeout_ms=30_000)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    n = state(conn, "r1")[0]
    assert state(conn, "r1") == (n, n, n)
    dup = conn.execute(
        "SELECT count(*) FROM (SELECT chunk_index FROM embed_assets.chunk_vectors GROUP BY 1 HAVING count(*) > 1) d"
    ).fetchone()[0]
    assert dup == 0


def test_rechunk_during_embedding_writes_nothing(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1"))
    chunk_recording(conn, "r1", SPEC, PARAMS)
    plan = plan_embeddings(conn, "r1", SPEC.model_id)
    upsert_transcript(conn, transcript("r1", variant="NEW"))
    chunk_recording(conn, "r1", SPEC, PARAMS)  # the plan the embedding was computed for is gone
    from embed_assets.lib.store import write_vectors

    vecs = {c.chunk_index: (c.content_hash, vector_for(c.content, 384)) for c in plan.to_embed}
    with pytest.raises(SourceChangedError, match="re-chunked or deleted during embedding"):
        write_vectors(conn, plan, vecs, insert_batch_size=50, statement_timeout_ms=30_000)
    assert state(conn, "r1")[1] == 0


def test_deleting_a_recording_removes_its_chunks_and_vectors(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("r1"))
    run(conn, "r1", HashEmbedder())
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'r1'")
    assert state(conn, "r1") == (0, 0, 0)
    assert conn.execute("SELECT count(*) FROM embed_assets.chunk_plans").fetchone()[0] == 0


def test_wrong_dimension_is_refused_before_writing(conn: psycopg.Connection) -> None:
    from embed_assets.lib.errors import ConfigError
    from embed_assets.lib.store import write_vectors

    upsert_transcript(conn, transcript("r1"))
    chunk_recording(conn, "r1", SPEC, PARAMS)
    plan = plan_embeddings(conn, "r1", SPEC.model_id)
    vecs = {c.chunk_index: (c.content_hash, np.ones(1536, np.float32)) for c in plan.to_embed}
    with pytest.raises(
        ConfigError, match="1536-dim vector but model text-embedding-3-small@384 is registered with 384 dimensions"
    ):
        write_vectors(conn, plan, vecs, insert_batch_size=50, statement_timeout_ms=30_000)
    assert state(conn, "r1")[1] == 0


@pytest.mark.parametrize("name", ["bit", "halfvec", "vector"])
def test_search_finds_the_exact_chunk_under_every_index_strategy(conn: psycopg.Connection, name: str) -> None:
    from embed_assets.lib.indexes import DEFAULT_INDEX
    from embed_assets.lib.models.change import reindex
    from embed_assets.lib.models.registry import active, index_strategy
    from embed_assets.lib.search.query import search

    for rid in ("r1", "r2", "r3"):
        upsert_transcript(conn, transcript(rid, 40, variant=rid))
        run(conn, rid, HashEmbedder())
    try:
        reindex(conn, None, name)
        assert index_strategy(conn, active(conn)).name == name
        last, target = conn.execute(  # the last chunk holds the turn unique to r2
            "SELECT chunk_index, content FROM embed_assets.chunks WHERE recording_id = 'r2' "
            "ORDER BY chunk_index DESC LIMIT 1"
        ).fetchone()
        hits = search(conn, vector_for(target, 384), None, k=5, mode="vector")
        assert (hits[0].recording_id, hits[0].chunk_index) == ("r2", last) and hits[0].score == pytest.approx(1.0)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and len(hits) == 5
        only = search(conn, vector_for(target, 384), None, k=3, recording_id="r3", mode="vector")
        assert len(only) == 3 and {h.recording_id for h in only} == {"r3"}
    finally:
        reindex(conn, None, DEFAULT_INDEX)


def test_a_3072_dim_model_gets_an_index(db_url: str) -> None:
    """text-embedding-3-large: a full-precision HNSW stops at 2,000 dimensions; the default strategy does not."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS large_model")
        c.execute("CREATE DATABASE large_model")
    with psycopg.connect(db_url.replace("/embed_assets?", "/large_model?"), autocommit=True) as c:
        from embed_assets.lib.models.registry import coverage, ensure_models

        assert migrate(c, 3072) == [m.version for m in MIGRATIONS]
        ensure_models(c, resolve_model("openai", "text-embedding-3-large"))
        [large] = coverage(c)
        assert (large.model_id, large.dimension, large.index, large.state) == (
            "text-embedding-3-large",
            3072,
            "bit",
            "active",
        )


def test_unchanged_recording_is_not_chunked_again(conn: psycopg.Connection, monkeypatch) -> None:
    import embed_assets.lib.pipeline as pipeline

    upsert_transcript(conn, transcript("r1"))
    first = chunk_recording(conn, "r1", SPEC, PARAMS)
    calls = []
    real = pipeline.chunk_segments
    monkeypatch.setattr(pipeline, "chunk_segments", lambda *a: calls.append(a) or real(*a))
    again = chunk_recording(conn, "r1", SPEC, PARAMS)
    assert calls == []  # same transcript, same chunker: the stored plan stands
    assert (again.chunks, again.tokens, again.unchanged, again.inserted) == (
        first.chunks,
        first.tokens,
        first.chunks,
        0,
    )
    chunk_recording(conn, "r1", SPEC, ChunkParams(30, 6))  # another chunker: chunked again
    assert len(calls) == 1
    upsert_transcript(conn, transcript("r1", variant="NEW"))  # another transcript: chunked again
    chunk_recording(conn, "r1", SPEC, ChunkParams(30, 6))
    assert len(calls) == 2


def test_prefetching_the_next_window_writes_the_same_and_never_pays_twice(conn) -> None:
    from embed_assets.lib.errors import TransientProviderError

    for rid in ("w0", "w1"):  # identical turns, in different windows: the second is planned before w0 is written
        upsert_transcript(conn, transcript(rid))
        chunk_recording(conn, rid, SPEC, PARAMS)
    _many(conn, ["w2", "w3"])
    ids = ["w0", "w1", "w2", "w3"]
    emb = HashEmbedder()
    embed = RecordingEmbedder(
        lambda: conn, emb, ids, window_inputs=1, insert_batch_size=50, statement_timeout_ms=30_000, prefetch=True
    )
    try:
        stats = [embed(rid) for rid in ids]
    finally:
        embed.close()
    assert stats[1].embedded == 0 and stats[1].cache_hits == stats[1].chunks  # w1's texts came from w0's window
    assert len(emb.calls) == 3 and sum(emb.calls) == sum(s.embedded for s in stats)
    for rid, s in zip(ids, stats, strict=True):
        assert state(conn, rid) == (s.chunks,) * 3

    class FailsSecond(HashEmbedder):  # the prefetched window's request fails: its head fails, not the others
        asked = 0

        def embed(self, texts, token_counts, progress=None):
            self.asked += 1
            if self.asked == 2:
                raise TransientProviderError("503 from the provider after every attempt")
            return super().embed(texts, token_counts, progress)

    conn.execute("DELETE FROM embed_assets.chunk_vectors")
    emb = FailsSecond()
    embed = RecordingEmbedder(
        lambda: conn, emb, ids[2:], window_inputs=1, insert_batch_size=50, statement_timeout_ms=30_000, prefetch=True
    )
    try:
        assert embed("w2").vectors_written > 0
        with pytest.raises(TransientProviderError):
            embed("w3")
    finally:
        embed.close()
    assert state(conn, "w3")[1] == 0 and state(conn, "w2")[1] > 0


def test_writers_write_each_recording_on_a_connection_of_their_own_and_fail_each_on_its_turn(conn, db_url: str) -> None:
    ids = [f"p{i}" for i in range(8)]
    _many(conn, ids)
    opened: list[psycopg.Connection] = []

    def connect() -> psycopg.Connection:
        opened.append(psycopg.connect(db_url, autocommit=True))
        return opened[-1]

    class RechunksP5(HashEmbedder):  # p5 is re-chunked after the window was planned, before anything is written
        def embed(self, texts, token_counts, progress=None):
            with psycopg.connect(db_url, autocommit=True) as other:
                other.execute("UPDATE embed_assets.chunk_plans SET chunked_at = now() WHERE recording_id = 'p5'")
            return super().embed(texts, token_counts, progress)

    emb = RechunksP5()
    embed = RecordingEmbedder(
        lambda: conn,
        emb,
        ids,
        window_inputs=1000,
        insert_batch_size=3,
        statement_timeout_ms=30_000,
        prefetch=True,
        writers=2,
        connect=connect,
    )
    results: dict[str, object] = {}
    try:
        for rid in ids:
            try:
                results[rid] = embed(rid)
            except SourceChangedError as e:
                results[rid] = e
    finally:
        embed.close()
    assert len(emb.calls) == 1  # one window: all eight planned and embedded at once, then written by the writers
    assert 1 <= len(opened) <= 3 and all(c.closed for c in opened)  # the writers' and the keeper's, closed after
    assert isinstance(results["p5"], SourceChangedError) and "re-chunked" in str(results["p5"])
    assert state(conn, "p5")[1] == 0  # refused under its lock: nothing written for it
    for rid in ids:
        if rid != "p5":
            s = results[rid]
            assert s.recording_id == rid and s.vectors_written == s.chunks > 0  # each its own result, in turn
            assert state(conn, rid) == (s.chunks,) * 3
