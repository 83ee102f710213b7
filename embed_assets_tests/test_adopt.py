"""`embed-assets adopt`: vectors already paid for, in a table shaped like the old system's transcript_chunks,
are verified and seeded into the cache; a full backfill afterwards sends none of their text to the provider."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import numpy as np
import psycopg
import pytest

from embed_assets.adoption import sample_embedder, stated_model
from embed_assets.definitions import defs
from embed_assets.lib.db.connection import register_vector_types
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.sources.adopt import adopt
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.store import as_array
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.openai_server import FakeOpenAI, vector_for
from embed_assets_tests.test_cli import cli

FAST = {"ops": {"chunk_embeddings": {"config": {"backoff_base_s": 0.01, "step_retry_delay_s": 0.1}}}}
OLD = "public.old_transcript_chunks"


def calls() -> list[Transcript]:
    return [
        Transcript(
            f"call-{c}",
            tuple(
                Segment(f"S{i % 2}", f"call {c} turn {i}: pricing, seats and the pilot timeline. " * 4)
                for i in range(10)
            ),
        )
        for c in range(3)
    ]


def backfill(conn: psycopg.Connection, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    ids = []
    for t in calls():
        upsert_transcript(conn, t)
        ids.append(t.recording_id)
    instance.add_dynamic_partitions(
        "recordings", [i for i in ids if not instance.has_dynamic_partition("recordings", i)]
    )
    tags = {"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]}
    return defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance, run_config=FAST, tags=tags, raise_on_error=False
    )


@pytest.fixture
def old_table(conn: psycopg.Connection, fake_openai: FakeOpenAI) -> Iterator[dict[str, np.ndarray]]:
    """The old system's table: the chunks' text and vectors of the same model, a little different from what the
    loopback returns today (as a real provider's are, call to call), so adopted vectors can be told apart."""
    with dg.instance_for_test() as instance:
        assert backfill(conn, instance).success
    texts = [r[0] for r in conn.execute("SELECT DISTINCT content FROM embed_assets.chunks")]
    rng = np.random.default_rng(7)
    old = {}
    for text in texts:
        v = vector_for(text, 384) + 0.04 * rng.standard_normal(384).astype(np.float32) / np.sqrt(384)
        old[text] = (v / np.linalg.norm(v)).astype(np.float32)
    register_vector_types(conn)
    conn.execute(f"DROP TABLE IF EXISTS {OLD}")
    conn.execute(f"CREATE TABLE {OLD} (id serial PRIMARY KEY, content text, embedding vector(384))")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO public.old_transcript_chunks (content, embedding) VALUES (%s, %s)", list(old.items())
        )
        cur.execute(
            "INSERT INTO public.old_transcript_chunks (content, embedding) VALUES (NULL, NULL)"
        )  # rows without either are skipped
    conn.execute("TRUNCATE embed_assets.recordings, embed_assets.vector_cache CASCADE")  # a fresh install
    yield old
    conn.execute(f"DROP TABLE IF EXISTS {OLD}")
    conn.execute("TRUNCATE embed_assets.vector_cache")


def run_adopt(conn: psycopg.Connection, table: str = OLD, **kw):
    spec = stated_model("text-embedding-3-small", 384)
    return adopt(
        conn,
        conn,
        table=table,
        text_column="content",
        embedding_column="embedding",
        spec=spec,
        embed=sample_embedder(spec),
        origin="test",
        **kw,
    )


def test_adopted_vectors_are_used_and_no_adopted_text_is_sent(
    conn: psycopg.Connection, old_table: dict[str, np.ndarray], fake_openai: FakeOpenAI
) -> None:
    report = run_adopt(conn)
    assert report.rows == report.distinct_texts == report.adopted == len(old_table)
    assert len(report.sample_cosines) == 8 and min(report.sample_cosines) > 0.99
    assert report.unchunked_recordings == 0 and report.matched_chunks == 0  # nothing registered yet

    requests = fake_openai.seen.requests
    with dg.instance_for_test() as instance:
        result = backfill(conn, instance)
    assert result.success
    assert fake_openai.seen.requests == requests  # zero provider requests for the adopted text
    meta = result.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert meta["cache_hits"].value == len(old_table) and meta["embedded"].value == 0
    register_vector_types(conn)
    got = conn.execute("SELECT content, embedding FROM embed_assets.transcript_chunks").fetchall()
    assert len(got) == len(old_table)
    for text, vec in got:
        np.testing.assert_allclose(as_array(vec), old_table[text], atol=1e-6)  # the adopted vectors themselves

    again = run_adopt(conn, sample_size=0)
    assert (again.adopted, again.already_cached) == (0, len(old_table))


def test_matches_are_reported_for_chunks_waiting_for_vectors(
    conn: psycopg.Connection, old_table: dict[str, np.ndarray], fake_openai: FakeOpenAI
) -> None:
    from embed_assets.defs.config import ChunkConfig
    from embed_assets.lib.pipeline import chunk_recording

    spec = stated_model("text-embedding-3-small", 384)
    for t in calls()[:2]:
        upsert_transcript(conn, t)
        chunk_recording(conn, t.recording_id, spec, ChunkConfig().params(spec))
    report = run_adopt(conn)
    chunks, tokens = conn.execute("SELECT count(*), sum(token_count) FROM embed_assets.chunks").fetchone()
    assert (report.matched_chunks, report.matched_tokens, report.unchunked_recordings) == (chunks, tokens, 0)


def test_vectors_of_another_model_or_dimension_are_refused_whole(
    conn: psycopg.Connection, old_table: dict[str, np.ndarray]
) -> None:
    rng = np.random.default_rng(3)
    conn.execute(
        "UPDATE public.old_transcript_chunks SET embedding = %s WHERE id %% 3 = 0",
        (rng.standard_normal(384).astype(np.float32),),
    )
    with pytest.raises(ConfigError, match=r"sampled vectors differ from text-embedding-3-small@384's embedding.*"
                       r"nothing adopted"):  # fmt: skip
        run_adopt(conn, sample_size=30)
    assert conn.execute("SELECT count(*) FROM embed_assets.vector_cache").fetchone()[0] == 0

    conn.execute("CREATE TABLE public.old_small (content text, embedding vector(8))")
    conn.execute("INSERT INTO public.old_small VALUES ('hello', '[1,2,3,4,5,6,7,8]')")
    try:
        with pytest.raises(ConfigError, match="holds 8-dim vectors but text-embedding-3-small@384 makes 384-dim"):
            run_adopt(conn, table="public.old_small")
    finally:
        conn.execute("DROP TABLE public.old_small")


def test_cli_refuses_a_model_it_cannot_verify(conn: psycopg.Connection, old_table, fake_openai: FakeOpenAI) -> None:
    proc = cli("adopt", "--table", OLD, "--model", "all-MiniLM-L6-v2")  # the provider here is openai
    assert proc.returncode == 1
    assert "cannot verify vectors of 'all-MiniLM-L6-v2' with EMBED_PROVIDER=openai" in proc.stderr
    proc = cli("adopt", "--table", "public.nope", "--model", "text-embedding-3-small", "--dimensions", "384")
    assert proc.returncode == 1 and "table public.nope does not exist" in proc.stderr
    proc = cli("adopt", "--table", OLD, "--model", "text-embedding-3-small", "--dimensions", "384")
    assert proc.returncode == 0, proc.stderr
    assert f"adopted {len(old_table)} vectors (0 already in the cache)" in proc.stdout
