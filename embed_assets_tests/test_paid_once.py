"""Never pay twice when the write fails, and count only what was billed (issue 33, items 4 and 5).

What the provider answered is kept in the vector cache before the indexed write (lib/vector_cache.py): a write
that times out, or a window one of whose requests fails, costs no second purchase; the run's metadata counts
every billed token; the daily cost figure counts billed tokens only, never copies, cache hits or adopted vectors.
Real Postgres, the real `openai` client against the loopback server, real Dagster runs."""

from __future__ import annotations

import dagster as dg
import numpy as np
import psycopg
import pytest
from pydantic import SecretStr

from embed_assets.definitions import defs
from embed_assets.defs.config import SMALL_BATCH_VALUES
from embed_assets.defs.monitoring import pipeline_health
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.lib.embedders.openai import OpenAIEmbedderConfig
from embed_assets.lib.errors import TransientProviderError
from embed_assets.lib.health.status import db_status, trend
from embed_assets.lib.pipeline import RecordingEmbedder, chunk_recording
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets.lib.vector_cache import Billed, keep_bought, keep_removed
from embed_assets_tests.support.openai_server import FakeOpenAI, Fault, vector_for
from embed_assets_tests.test_adopt import backfill, old_table, run_adopt  # noqa: F401 (old_table: a fixture)
from embed_assets_tests.test_store import PARAMS, SPEC, HashEmbedder, run, transcript

FAST = {"step_retry_delay_s": 0.1, "backoff_base_s": 0.01}


def long_call(rid: str, turns: int = 400) -> Transcript:
    return Transcript(
        rid, tuple(Segment(f"S{i % 3}", f"turn {i} of the renewal and its seats " * 5) for i in range(turns))
    )


def execute(instance: dg.DagsterInstance, key: str, config: dict) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("recordings", key):
        instance.add_dynamic_partitions("recordings", [key])
    return defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance,
        partition_key=key,
        run_config={"ops": {"chunk_embeddings": {"config": config}}},
        raise_on_error=False,
    )


def bought_in_cache(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM embed_assets.vector_cache WHERE expires_at IS NOT NULL").fetchone()[0]


def test_a_statement_timeout_on_a_long_recordings_write_is_not_bought_again_by_the_small_batch_retry(
    conn: psycopg.Connection, db_url: str, fake_openai: FakeOpenAI
) -> None:
    upsert_transcript(conn, long_call("long-call"))
    # Writes into the vector table wait behind this lock (reads do not), so the indexed write hits its timeout.
    holder = psycopg.connect(db_url)
    holder.execute("LOCK TABLE embed_assets.chunk_vectors IN SHARE MODE")
    try:
        with dg.instance_for_test() as instance:
            failed = execute(instance, "long-call", {**FAST, "statement_timeout_s": 1.0})
            holder.close()
            assert not failed.success
            (failure,) = [e for e in failed.all_events if e.is_step_failure]
            assert "statement timeout" in failure.step_failure_data.user_failure_data.description
            chunks = conn.execute("SELECT count(*) FROM embed_assets.chunks").fetchone()[0]
            bought, billed = fake_openai.seen.inputs, fake_openai.seen.tokens
            assert chunks > 100 and bought == chunks and billed > 0
            assert conn.execute("SELECT count(*) FROM embed_assets.chunk_vectors").fetchone()[0] == 0  # rolled back
            assert bought_in_cache(conn) == chunks  # but what was bought is kept
            # The failed run's metadata counts what the provider billed for it.
            md = failure.step_failure_data.user_failure_data.metadata
            assert md["tokens"].value == billed and md["estimated_cost_usd"].value == pytest.approx(
                billed * 0.02 / 1e6, abs=1e-6
            )

            retry = execute(instance, "long-call", {**SMALL_BATCH_VALUES, **FAST})
            assert retry.success
    finally:
        holder.close()
    assert fake_openai.seen.inputs == bought  # the small-batch retry bought nothing
    md = retry.asset_materializations_for_node("chunk_embeddings")[0].metadata
    assert (md["embedded"].value, md["cache_hits"].value, md["tokens"].value) == (0, chunks, 0)
    assert conn.execute("SELECT count(*) FROM embed_assets.chunk_vectors").fetchone()[0] == chunks
    assert bought_in_cache(conn) == 0  # used by the write: gone from the cache (bounded growth)


def test_a_window_whose_third_request_fails_keeps_the_two_answered_ones(
    conn: psycopg.Connection, fake_openai: FakeOpenAI
) -> None:
    ids = ["win-a", "win-b"]
    for rid in ids:
        segments = tuple(Segment(f"S{i % 2}", f"{rid} turn {i} " + "lorem ipsum dolor " * 5) for i in range(40))
        upsert_transcript(conn, Transcript(rid, segments))
        chunk_recording(conn, rid, SPEC, PARAMS)
    texts = conn.execute("SELECT count(DISTINCT content_hash) FROM embed_assets.chunks").fetchone()[0]
    config = OpenAIEmbedderConfig(
        model="text-embedding-3-small",
        dimensions=384,
        base_url=fake_openai.base_url,
        max_inputs_per_request=8,
        max_concurrency=1,  # in order: requests 1 and 2 answered, 3 fails, the rest never sent
        max_attempts=1,
    )

    def step() -> RecordingEmbedder:
        return RecordingEmbedder(
            lambda: conn,
            config.build(SecretStr(fake_openai.api_key)),
            ids,
            window_inputs=1000,  # one window for both recordings
            insert_batch_size=50,
            statement_timeout_ms=30_000,
        )

    fake_openai.fail_requests({3}, Fault(status=500))
    first = step()
    with pytest.raises(TransientProviderError):
        first("win-a")
    assert fake_openai.seen.inputs == 16 and texts > 24
    assert first.totals.tokens == fake_openai.seen.tokens > 0  # the step's tokens count the billed answers
    assert conn.execute("SELECT sum(inputs), sum(tokens) FROM embed_assets.provider_usage").fetchone() == (
        16,
        fake_openai.seen.tokens,
    )
    assert bought_in_cache(conn) == 16

    fake_openai.fault = lambda n: None
    retry = step()
    stats = [retry(rid) for rid in ids]
    assert fake_openai.seen.inputs == texts  # every text bought exactly once: the 16 answered were not re-bought
    assert sum(s.vectors_written for s in stats) == sum(s.chunks for s in stats)
    assert bought_in_cache(conn) == 0


def test_adopted_vectors_cost_nothing_per_day(
    conn: psycopg.Connection,
    old_table: dict[str, np.ndarray],  # noqa: F811
    fake_openai: FakeOpenAI,
) -> None:
    conn.execute("TRUNCATE embed_assets.provider_usage")  # the fixture's run built the old table: not this install
    report = run_adopt(conn)
    assert report.adopted == len(old_table)
    with dg.instance_for_test() as instance:
        assert backfill(conn, instance).success
        result = dg.materialize(
            [pipeline_health],
            instance=instance,
            resources={"store": VectorStoreResource(), "embedder": EmbedderResource()},
        )
    vectors = conn.execute("SELECT count(*) FROM embed_assets.chunk_vectors").fetchone()[0]
    assert vectors == len(old_table)  # all written just now, none bought
    md = {k: v.value for k, v in result.asset_materializations_for_node("pipeline_health")[0].metadata.items()}
    assert (md["estimated_cost_usd_per_day"], md["tokens_last_hour"], md["vectors_last_hour"]) == (0, 0, 0)
    assert db_status(conn, SPEC.model_id).vectors_last_hour == 0  # `status`: "0 embedded in the last hour"


def test_a_copy_and_a_returning_recording_served_from_cache_cost_nothing(conn: psycopg.Connection) -> None:
    upsert_transcript(conn, transcript("first", 30))
    emb = HashEmbedder()
    run(conn, "first", emb)
    day = trend(conn, SPEC.model_id)
    assert day.tokens_last_24h > 0 and day.vectors_last_hour == sum(emb.calls)

    copy = transcript("first", 30)
    upsert_transcript(conn, Transcript("copy", copy.segments))  # the same call under another id
    run(conn, "copy", emb)
    assert trend(conn, SPEC.model_id) == day  # the copy's vectors were reused, not bought
    # Removed (its vectors kept for the grace period), then loaded again with the same content.
    assert keep_removed(conn, ["first", "copy"]) > 0
    conn.execute("DELETE FROM embed_assets.recordings WHERE recording_id IN ('first', 'copy')")
    upsert_transcript(conn, transcript("first", 30))  # only the cache holds its vectors now
    stats = run(conn, "first", emb)
    assert stats.embedded == 0 and stats.vectors_written == stats.chunks > 0
    assert len(emb.calls) == 1  # the provider was asked once, for the first load only
    assert trend(conn, SPEC.model_id) == day  # the copy and the return cost nothing and were no provider work


def test_bought_vectors_no_write_used_expire_after_the_grace_period(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    def keep(h: str, prune: bool = False) -> None:
        keep_bought(conn, SPEC.model_id, [h], [vector_for(h, 384)], Billed(1, 1, 3), prune=prune)

    keep("left-behind")
    assert conn.execute(
        "SELECT expires_at > now() + interval '6.9 days' AND expires_at < now() + interval '7.1 days'"
        " FROM embed_assets.vector_cache"
    ).fetchone() == (True,)  # EMBED_VECTOR_CACHE_DAYS' default
    conn.execute("UPDATE embed_assets.vector_cache SET expires_at = now() - interval '1 second'")
    keep("fresh", prune=True)  # a step's first keep prunes
    assert [r[0] for r in conn.execute("SELECT content_hash FROM embed_assets.vector_cache")] == ["fresh"]
    monkeypatch.setenv("EMBED_VECTOR_CACHE_DAYS", "0")
    with pytest.raises(ValueError, match="EMBED_VECTOR_CACHE_DAYS=0 must be > 0"):
        keep("never")


def test_a_worker_role_under_row_security_keeps_and_uses_what_it_bought(conn: psycopg.Connection) -> None:
    from embed_assets.lib.db.roles import grant, revoke
    from embed_assets.lib.vector_cache import consume

    conn.execute("DROP ROLE IF EXISTS paid_once_worker")
    conn.execute("CREATE ROLE paid_once_worker")
    grant(conn, "paid_once_worker", "runtime")  # what `embed-assets grant ROLE --access runtime` does
    try:
        conn.execute("SET ROLE paid_once_worker")
        assert conn.execute("SELECT row_security_active('embed_assets.vector_cache')").fetchone()[0]
        keep_bought(conn, SPEC.model_id, ["a", "b"], [vector_for(h, 384) for h in "ab"], Billed(1, 2, 7), prune=True)
        consume(conn, SPEC.model_id, ["a"])
        assert [r[0] for r in conn.execute("SELECT content_hash FROM embed_assets.vector_cache")] == ["b"]
        assert conn.execute("SELECT inputs, tokens FROM embed_assets.provider_usage").fetchall() == [(2, 7)]
    finally:
        conn.execute("RESET ROLE")
        revoke(conn, "paid_once_worker")
        conn.execute("DROP OWNED BY paid_once_worker")
        conn.execute("DROP ROLE paid_once_worker")


def test_requests_answered_beside_a_refused_one_are_handed_back_with_its_error(fake_openai: FakeOpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from embed_assets.lib.embedders.base import answered_before
    from embed_assets.lib.errors import ProviderError
    from embed_assets_tests.test_reliability import wait_for

    config = OpenAIEmbedderConfig(
        model="text-embedding-3-small",
        dimensions=384,
        base_url=fake_openai.base_url,
        max_inputs_per_request=4,
        max_concurrency=4,
        max_attempts=1,
    )
    embedder = config.build(SecretStr(fake_openai.api_key))
    texts = [f"passage {i} about the pilot" for i in range(16)]
    fake_openai.fail_requests({1}, Fault(status=400))  # the first to arrive is refused; the three beside it answered
    fake_openai.gate.clear()  # all four in flight before any is answered
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(embedder.embed, texts, [6] * 16)
        wait_for(lambda: fake_openai.seen.requests >= 4, "four requests in flight")
        fake_openai.gate.set()
        with pytest.raises(ProviderError) as refused:
            call.result()
    answered = answered_before(refused.value)
    assert answered is not None and len(answered.indexes) == fake_openai.seen.inputs == 12
    assert answered.result.tokens == fake_openai.seen.tokens and answered.result.requests == 4
    for i in answered.indexes:
        np.testing.assert_allclose(answered.result.vectors[i], vector_for(texts[i], 384), atol=1e-6)
    embedder.close()
