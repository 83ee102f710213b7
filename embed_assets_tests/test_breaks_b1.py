"""Reviewer b1: paths where issue 33's promises still break (each test named for its scenario).

Real Postgres (the tests' embedded server), the real pipeline; the provider is the in-process HashEmbedder,
which counts every text it is asked to embed (what a provider would bill)."""

from __future__ import annotations

import psycopg

from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.test_store import HashEmbedder, run, transcript


def test_a_transcript_edited_a_b_a_does_not_buy_the_chunks_of_a_twice(conn: psycopg.Connection) -> None:
    emb = HashEmbedder()
    upsert_transcript(conn, transcript("r1", 30, "version A"))
    first = run(conn, "r1", emb)
    assert first.embedded > 0
    upsert_transcript(conn, transcript("r1", 30, "version B"))  # the last turn edited: its chunk(s) change
    edited = run(conn, "r1", emb)
    assert edited.embedded > 0  # B's changed chunk(s) bought once: fine
    upsert_transcript(conn, transcript("r1", 30, "version A"))  # the edit reverted
    back = run(conn, "r1", emb)
    assert back.vectors_written > 0
    # A's chunks were bought by the first run; the revert must find them, not buy them again.
    assert back.embedded == 0, f"{back.embedded} chunk(s) of version A bought a second time"
