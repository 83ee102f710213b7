"""Search on the real embedded Postgres with the real local model (MiniLM, offline): hybrid, vector and text
modes through the SQL function embed_search, batch search from the CLI, and the evaluation at toy size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from embed_assets.lib.chunking import ChunkParams
from embed_assets.lib.embedders import LocalEmbedderConfig
from embed_assets.lib.pipeline import chunk_recording, embed_recording
from embed_assets.lib.search.evaluate import LabelledQuery, evaluate, random_baseline
from embed_assets.lib.search.query import search
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets.lib.transcripts import Segment, Transcript
from embed_assets_tests.support.models import reset_models
from embed_assets_tests.test_cli import cli

CALLS = {
    "call-pricing": [
        ("Dana", "Thanks for joining, let's go over the renewal."),
        ("Sam", "Sure. Our concern is the budget for next year."),
        ("Dana", "Honestly the list price will go up by about eight percent in the next quarter."),
        ("Sam", "That is hard to sell internally, we need to think about it."),
    ],
    "call-support": [
        ("Lee", "I have the ticket open in front of me."),
        ("Ana", "The export fails with reference ZEBRA42QX every time we run it."),
        ("Lee", "Let me check the logs and come back to you."),
    ],
    "call-hiring": [
        ("Kim", "We interviewed three candidates for the data role this week."),
        ("Jo", "The second one had strong Postgres experience and good references."),
    ],
}


@pytest.fixture(scope="module")
def model():
    embedder = LocalEmbedderConfig().build()
    yield embedder
    embedder.close()


@pytest.fixture
def loaded(conn: psycopg.Connection, model) -> Iterator[psycopg.Connection]:
    reset_models(conn, model.spec)
    for rid, turns in CALLS.items():
        upsert_transcript(conn, Transcript(rid, tuple(Segment(s, t) for s, t in turns), title=rid))
        chunk_recording(conn, rid, model.spec, ChunkParams(24, 0))
        embed_recording(conn, rid, model, insert_batch_size=50, statement_timeout_ms=30_000)
    # Statistics as autovacuum would gather them at any moment: on this small store every word is in more than
    # 2% of the chunks, and a global text search must still find a word (it once found nothing, by timing).
    conn.execute("ANALYZE embed_assets.chunks")
    yield conn


def vec(model, text: str) -> np.ndarray:
    return model.embed([text], [len(text.split())]).vectors[0]


def test_hybrid_finds_a_keyword_only_match_and_a_meaning_only_match(loaded: psycopg.Connection, model) -> None:
    # A code no embedding knows: found by its words.
    code = "ZEBRA42QX"
    by_text = search(loaded, None, code, 3, mode="text")
    assert by_text and by_text[0].recording_id == "call-support" and code in by_text[0].content
    hybrid = search(loaded, vec(model, code), code, 3, mode="hybrid")
    assert (hybrid[0].recording_id, hybrid[0].chunk_index) == (by_text[0].recording_id, by_text[0].chunk_index)
    # No word in common with the chunk (after stemming): found by meaning only.
    question = "will it cost more"
    assert not [h for h in search(loaded, None, question, 3, mode="text") if "price" in h.content]
    hybrid = search(loaded, vec(model, question), question, 3, mode="hybrid")
    assert any("price will go up" in h.content for h in hybrid[:2]), [h.content for h in hybrid]
    # Speaker names are searchable text: "what did Dana say" can use the name.
    named = search(loaded, None, "what did Ana say", 5, mode="text")
    assert named and all("Ana" in h.speakers for h in named)
    # Scores: vector mode is cosine similarity, best first; a recording filter holds.
    v = search(loaded, vec(model, question), question, 5, recording_id="call-pricing", mode="vector")
    assert {h.recording_id for h in v} == {"call-pricing"} and 0 < v[0].score <= 1
    assert [h.score for h in v] == sorted((h.score for h in v), reverse=True)


def test_distinct_passages_come_first(conn: psycopg.Connection, model) -> None:
    """Overlapping chunks (the overlap repeats the end of the previous chunk) are not ranked side by side:
    the better one stands for both, the next results are different passages, and the overlapping ones
    come after all of them (still returned: k results whenever there are k chunks)."""
    turns = [("A", f"Point {i}: the migration plan for the billing database needs review step {i}.") for i in range(12)]
    upsert_transcript(conn, Transcript("long", tuple(Segment(s, t) for s, t in turns)))
    reset_models(conn, model.spec)
    chunk_recording(conn, "long", model.spec, ChunkParams(40, 16))
    embed_recording(conn, "long", model, insert_batch_size=50, statement_timeout_ms=30_000)
    spans = conn.execute("SELECT first_seq, last_seq FROM embed_assets.chunks ORDER BY chunk_index").fetchall()
    assert any(b[0] <= a[1] for a, b in zip(spans, spans[1:], strict=False))  # neighbours do share turns
    for mode in ("hybrid", "vector", "text"):
        hits = search(conn, vec(model, "billing database migration"), "billing database migration", 10, mode=mode)
        assert len(hits) == min(10, len(spans)) or mode == "text", mode
        flags = [
            any(b.first_seq <= h.last_seq and h.first_seq <= b.last_seq for b in hits[:i]) for i, h in enumerate(hits)
        ]
        assert any(flags) and flags == sorted(flags), (mode, flags)  # every distinct passage before any overlap


def test_words_in_most_chunks_are_left_out_of_a_search_over_every_recording(conn: psycopg.Connection, model) -> None:
    """Over all recordings of a large store, a word found in most chunks (by ANALYZE's statistics) would make the
    text side rank most of the table; it is left out there, and still counts within one recording. On a small
    store every word counts (there, every word is in more than 2% of the chunks)."""
    reset_models(conn, model.spec)
    for i in range(60):
        turns = (("A", f"Quarterly planning meeting number {i} about budget topic{i}."),)
        upsert_transcript(conn, Transcript(f"m{i}", tuple(Segment(s, t) for s, t in turns)))
        chunk_recording(conn, f"m{i}", model.spec, ChunkParams(40, 0))
        embed_recording(conn, f"m{i}", model, insert_batch_size=50, statement_timeout_ms=30_000)
    conn.execute("ANALYZE embed_assets.chunks")
    assert len(search(conn, None, "quarterly planning", 5, mode="text")) == 5  # 60 chunks: a small store
    # A large store: 10,000 more chunks (text only), most of them about quarterly planning.
    upsert_transcript(conn, Transcript("filler", (Segment("B", "filler"),)))
    with conn.cursor().copy(
        "COPY embed_assets.chunks (recording_id, model, chunk_index, content, first_seq, last_seq, speakers,"
        " token_count, content_hash) FROM STDIN"
    ) as cp:
        for i in range(10_000):
            row = ("filler", model.spec.model_id, i, f"B: quarterly planning filler{i}", 0, 0, ["B"], 5, f"h{i}")
            cp.write_row(row)
    conn.execute("ANALYZE embed_assets.chunks")
    assert search(conn, None, "quarterly planning", 5, mode="text") == []
    rare = search(conn, None, "quarterly topic17", 5, mode="text")
    assert [h.recording_id for h in rare] == ["m17"]
    assert [h.recording_id for h in search(conn, None, "quarterly planning", 5, "m3", mode="text")] == ["m3"]


def test_embed_search_from_plain_sql(loaded: psycopg.Connection, model) -> None:
    literal = "[" + ",".join(f"{x:.6f}" for x in vec(model, "price increase next quarter")) + "]"
    rows = loaded.execute(
        """SELECT recording_id, chunk_index, content, first_seq, last_seq, start_s, end_s, speakers, score
           FROM embed_assets.embed_search(%s::vector, 'price increase', 2)""",
        (literal,),
    ).fetchall()
    assert len(rows) == 2 and rows[0][0] == "call-pricing" and rows[0][8] >= rows[1][8]
    only = loaded.execute(
        "SELECT recording_id FROM embed_assets.embed_search(NULL, 'candidates', 5, recording_id => 'call-hiring')"
    ).fetchall()
    assert only == [("call-hiring",)] * len(only) and only
    with pytest.raises(psycopg.errors.RaiseException, match="needs a query_embedding, a query_text, or both"):
        loaded.execute("SELECT * FROM embed_assets.embed_search(NULL, '  ', 3)")


def test_search_batch_writes_one_json_line_per_query(loaded: psycopg.Connection, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"query": "ZEBRA42QX"})
        + "\n\n"
        + json.dumps({"query": "candidates", "recording_id": "call-hiring", "k": 1})
        + "\n"
    )
    proc = cli("search", "--batch", str(queries), "--mode", "text")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["line"] for x in lines] == [1, 3] and [x["mode"] for x in lines] == ["text", "text"]
    assert lines[0]["hits"][0]["recording_id"] == "call-support"
    assert len(lines[1]["hits"]) == 1 and lines[1]["hits"][0]["recording_id"] == "call-hiring"
    assert set(lines[1]["hits"][0]) == {
        "recording_id", "chunk_index", "score", "first_seq", "last_seq", "start_s", "end_s", "speakers", "content"
    }  # fmt: skip
    queries.write_text('{"query": "ok"}\n{"k": 3}\n')
    bad = cli("search", "--batch", str(queries))
    assert bad.returncode == 1 and f"{queries}:2" in bad.stderr and "query" in bad.stderr


def test_evaluation_at_toy_size(loaded: psycopg.Connection, model) -> None:
    queries = [
        LabelledQuery("call-pricing", "how much will the price rise", ((2, 2),)),
        LabelledQuery("call-support", "which error code does the export show", ((1, 1),)),
    ]
    report = evaluate(loaded, queries, lambda texts: model.embed(texts, [1] * len(texts)).vectors)
    assert set(report.methods) == {
        "product hybrid",
        "product vector",
        "product text",
        "random chunks",
        "reference recipe",
    }
    for splits in report.methods.values():
        m = splits["all"]
        assert m["queries"] == 2 and 0 <= m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= 1
    # Recordings this small fit in one reference window: every method finds the answer in the top 10.
    assert report.methods["reference recipe"]["all"]["recall@1"] == 1.0
    assert set(report.latency_ms) == {"hybrid", "vector", "text"}


def test_random_baseline_is_the_exact_expectation() -> None:
    chunks = {"r": [(0, 0), (1, 1), (2, 2), (3, 3)]}  # one chunk of four answers
    m = random_baseline(chunks, [LabelledQuery("r", "q", ((2, 2),))])
    assert m.recall[1] == pytest.approx(0.25) and m.recall[3] == pytest.approx(0.75) and m.recall[5] == 1.0
    assert m.mrr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
