"""Changing the model without downtime, through real Dagster runs, the real embedded Postgres, the local MiniLM
model and the real openai client against the loopback server: shadow, compare, activate, roll back, drop."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dagster as dg
import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from embed_assets.cli import app
from embed_assets.definitions import defs
from embed_assets.defs.resources import EmbedderResource
from embed_assets.lib.models import resolve_model
from embed_assets.lib.models.registry import coverage, registered
from embed_assets.lib.search.query import search
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.openai_server import FakeOpenAI

MINI = resolve_model("local", "all-MiniLM-L6-v2")
SMALL = resolve_model("openai", "text-embedding-3-small")
FAST = {"ops": {"chunk_embeddings": {"config": {"backoff_base_s": 0.01, "step_retry_delay_s": 0.1}}}}
TOPICS = ("renewal pricing and the discount", "the onboarding timeline", "a data export bug", "security review")
QUERIES = ("what discount did they ask for", "when does onboarding start", "export fails", "security questionnaire")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def call(rid: str, topic: str) -> Transcript:
    return Transcript(
        rid,
        tuple(
            Segment(f"S{i % 2}", f"turn {i} of {rid}: we talked about {topic}, point {i} " + "and more detail " * 6)
            for i in range(14)
        ),
    )


def run(instance: dg.DagsterInstance, key: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("embed_recordings").execute_in_process(
        instance=instance, partition_key=key, run_config=FAST, raise_on_error=False
    )


def results(conn: psycopg.Connection, embed) -> list[list[tuple]]:
    """Every mode's hits for QUERIES, as comparable tuples (ids, turns and scores)."""
    vecs = embed(list(QUERIES))
    out = []
    for mode in ("hybrid", "vector"):
        for q, v in zip(QUERIES, vecs, strict=True):
            out.append(
                [
                    (h.recording_id, h.chunk_index, h.first_seq, round(h.score, 6))
                    for h in search(conn, v, q, 5, None, mode)
                ]
            )
    return out


def cli(*args: str) -> tuple[int, str]:
    """Exit code and everything said (an EmbedAssetsError is main()'s one line: here, the exception's text)."""
    result = CliRunner().invoke(app, list(args))
    said = result.output + (
        f"\n{result.exception}" if result.exception and not isinstance(result.exception, SystemExit) else ""
    )
    return result.exit_code, said


def test_shadow_compare_activate_rollback_drop(conn: psycopg.Connection, instance, monkeypatch) -> None:
    # MiniLM active with four recordings embedded (the store held no vector, so the configured model replaced the
    # fixture's: the fresh-install rule).
    ids = []
    for n, topic in enumerate(TOPICS):
        upsert_transcript(conn, call(f"rec-{n}", topic))
        ids.append(f"rec-{n}")
    instance.add_dynamic_partitions("recordings", ids)
    for rid in ids:
        assert run(instance, rid).success
    [mini] = registered(conn)
    assert (mini.model_id, mini.active) == (MINI.model_id, True)
    embed_mini = EmbedderResource().texts_embedder(MINI)
    before = results(conn, embed_mini)
    assert all(before)

    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        # Shadow: cost estimate first (MiniLM's chunks are shared: 3-small reads far more than 256 word pieces).
        code, output = cli("model", "shadow", "text-embedding-3-small", "--yes")
        assert code == 0, output
        texts = conn.execute(
            "SELECT count(DISTINCT content_hash) FROM embed_assets.chunks WHERE model = %s", (MINI.model_id,)
        ).fetchone()[0]
        assert f"{texts:,} distinct chunk texts to embed (the active model's chunks)" in output
        assert [r.model_id for r in registered(conn)] == [MINI.model_id, SMALL.model_id]
        assert server.seen.requests == 0  # an estimate, not a request

        # Not complete: activation refused, naming what search would miss.
        code, output = cli("model", "activate", "text-embedding-3-small")
        assert code == 1 and "search would miss 4 recording(s)" in output

        # Half of the shadow backfill: search of the active model is untouched.
        for rid in ids[:2]:
            result = run(instance, rid)
            assert result.success
            md = result.asset_materializations_for_node("chunk_embeddings")[0].metadata
            assert md["model"].value == MINI.model_id
            assert md["model_states"].value == f"{MINI.model_id} (active), {SMALL.model_id} (shadow)"
            per_model = md["models"].value
            assert per_model[MINI.model_id]["embedded"] == 0  # the active model's vectors were in place
            assert per_model[SMALL.model_id]["embedded"] > 0 and per_model[SMALL.model_id]["dimension"] == 1536
        assert results(conn, embed_mini) == before
        small_chunks = conn.execute(
            "SELECT count(*) FROM embed_assets.chunks WHERE model = %s", (SMALL.model_id,)
        ).fetchone()[0]
        shared = conn.execute(
            """SELECT count(*) FROM embed_assets.chunks a JOIN embed_assets.chunks b USING (recording_id, chunk_index)
               WHERE a.model = %s AND b.model = %s AND a.content_hash = b.content_hash""",
            (MINI.model_id, SMALL.model_id),
        ).fetchone()[0]
        assert small_chunks == shared > 0  # the very same passages
        code, output = cli("model", "activate", "text-embedding-3-small")
        assert code == 1 and "search would miss 2 recording(s)" in output

        for rid in ids[2:]:
            assert run(instance, rid).success
        assert results(conn, embed_mini) == before
        cov = {c.model_id: c for c in coverage(conn)}
        assert cov[SMALL.model_id].current == cov[MINI.model_id].current == 4
        code, output = cli("status", "--json")
        assert code == 0 and json.loads(output.splitlines()[-1])["models"][SMALL.model_id]["completion_pct"] == 100.0

        # Re-running the shadow model's backfill pays nothing.
        requests = server.seen.requests
        for rid in ids:
            assert run(instance, rid).success
        assert server.seen.requests == requests

        # Compare on queries drawn from chunk text: overlap and latency of each model.
        code, output = cli("model", "compare", SMALL.model_id, "--sample", "8", "--json")
        assert code == 0, output
        report = json.loads(output.splitlines()[-1])
        assert report["queries"] == 8 and 0.0 <= report["overlap"]["vector"] <= 1.0
        assert set(report["latency_ms"]) == {MINI.model_id, SMALL.model_id}
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'embed_assets' AND p.proname = 'embed_search_compare'"
            ).fetchone()[0]
            == 0
        )  # the comparison's function was rolled back

        # Cut-over: search now reads 1536-d vectors.
        code, output = cli("model", "activate", "text-embedding-3-small")
        assert code == 0 and "now the active model" in output, output
        embed_small = EmbedderResource().texts_embedder(SMALL)
        q = embed_small(["what discount did they ask for"])[0]
        assert q.shape == (1536,)
        hits = search(conn, q, None, 5, None, "vector")
        assert len(hits) == 5
        with pytest.raises(psycopg.errors.DataException, match="expected 1536 dimensions, not 384"):
            search(conn, np.asarray(embed_mini(["x"])[0]), None, 5, None, "vector")
        code, output = cli("search", "onboarding timeline", "--mode", "vector", "--json")
        assert code == 0 and len(output.strip().splitlines()) == 5

        # Rolling back is activating the old model again, while it exists; then forward again.
        assert cli("model", "activate", MINI.model_id)[0] == 0
        assert results(conn, embed_mini) == before
        assert cli("model", "activate", SMALL.model_id)[0] == 0

        # Drop: the active model is refused; the old one's rows, table and index go.
        code, output = cli("model", "drop", SMALL.model_id, "--yes")
        assert code == 1 and "is the active model" in output
        partition = next(r.partition for r in registered(conn) if r.model_id == MINI.model_id)
        code, output = cli("model", "drop", MINI.model_id, "--yes")
        assert code == 0 and "vectors and its index removed" in output, output
        assert [r.model_id for r in registered(conn)] == [SMALL.model_id]
        assert conn.execute("SELECT to_regclass(%s)", (f"embed_assets.{partition}",)).fetchone()[0] is None
        assert conn.execute("SELECT to_regclass(%s)", (f"embed_assets.{partition}_hnsw",)).fetchone()[0] is None
        for table in ("chunk_vectors", "chunks", "embedded_recordings"):
            n = conn.execute(f"SELECT count(*) FROM embed_assets.{table} WHERE model = %s", (MINI.model_id,))  # noqa: S608
            assert n.fetchone()[0] == 0

        # The sensor is pending for nothing now; a new recording is embedded for the active model only.
        requests = server.seen.requests
        upsert_transcript(conn, call("rec-new", "a brand new topic"))
        instance.add_dynamic_partitions("recordings", ["rec-new"])
        assert run(instance, "rec-new").success and server.seen.requests > requests


def test_a_3072_dim_shadow_model_is_built_and_served(conn: psycopg.Connection, instance, monkeypatch) -> None:
    """text-embedding-3-large beside text-embedding-3-small: its partition gets the default `bit` index (a
    full-precision HNSW stops at 2,000 dimensions), and after activation search serves 3072-d vectors."""
    large = resolve_model("openai", "text-embedding-3-large")
    with FakeOpenAI(default_dim=3072) as server:
        monkeypatch.setenv("EMBED_PROVIDER", "openai")
        monkeypatch.setenv("EMBED_MODEL", "text-embedding-3-small")
        monkeypatch.setenv("EMBED_DIMENSIONS", "384")
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        upsert_transcript(conn, call("rec-l", "the renewal"))
        instance.add_dynamic_partitions("recordings", ["rec-l"])
        assert run(instance, "rec-l").success  # 384-d vectors (the `dimensions` parameter is sent)
        code, output = cli("model", "shadow", "text-embedding-3-large", "--yes")
        assert code == 0, output
        assert run(instance, "rec-l").success
        cov = {c.model_id: c for c in coverage(conn)}
        assert (cov[large.model_id].dimension, cov[large.model_id].index) == (3072, "bit")
        assert cov[large.model_id].current == 1 and cov[large.model_id].vectors > 0
        assert cli("model", "activate", large.model_id)[0] == 0
        q = EmbedderResource().texts_embedder(large)(["the renewal"])[0]
        hits = search(conn, q, "renewal", 3, None, "hybrid")
        assert len(hits) == 3 and {h.recording_id for h in hits} == {"rec-l"}
        assert conn.execute("SELECT model, dimension FROM embed_assets.active_model").fetchone() == (
            large.model_id,
            3072,
        )
