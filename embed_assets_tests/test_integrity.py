"""Turns skipped at import keep their source seq through the store and the chunks, and the integrity check
holds such recordings to the segments actually stored. Real embedded Postgres, real import path."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from embed_assets.lib.chunking import ChunkParams
from embed_assets.lib.health.integrity import check_integrity
from embed_assets.lib.pipeline import chunk_recording, embed_recording
from embed_assets.lib.sources.tables import read_recording, upsert_transcript
from embed_assets.lib.transcripts import Transcript, parse_file
from embed_assets_tests.test_store import SPEC, HashEmbedder

NO_SPEECH = ["", "   ", "[Laughter.]", "{vocalsound} {disfmarker}", "(inaudible)", "<noise> ♪"]
# No overlap, and a turn fills most of a chunk: each chunk holds one turn, so chunk boundaries fall across
# the skipped turns (first_seq of a chunk > last_seq + 1 of the one before), which is not a gap.
PARAMS = ChunkParams(40, 0)


def noisy(tmp_path: Path, rid: str, lead_blanks: int = 0) -> Transcript:
    """Speech at even turns (after `lead_blanks` empty turns), turns without speech at odd ones."""
    turns = [{"speaker": "A", "text": ""}] * lead_blanks
    for i in range(16):
        text = f"turn {i} " + "we discussed the renewal terms " * 4 if i % 2 == 0 else NO_SPEECH[i % len(NO_SPEECH)]
        turns.append({"speaker": f"S{i % 3}", "text": text, "start_s": i, "end_s": i + 1})
    path = tmp_path / f"{rid}-{lead_blanks}.json"
    path.write_text(json.dumps({"recording_id": rid, "segments": turns}))
    parsed = parse_file(path)
    assert [p.message for p in parsed.problems] == [
        f"skipped {8 + lead_blanks} turn(s) with no speech: "
        + ", ".join(str(i) for i in [*range(lead_blanks), *range(lead_blanks + 1, lead_blanks + 16, 2)])
    ]
    (t,) = parsed.transcripts
    return t


def stored_seqs(conn: psycopg.Connection, rid: str) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT seq FROM embed_assets.transcript_segments WHERE recording_id = %s ORDER BY seq", (rid,)
        )
    ]


def test_source_seqs_are_stored_read_back_and_cited_by_chunks(conn: psycopg.Connection, tmp_path: Path) -> None:
    assert upsert_transcript(conn, noisy(tmp_path, "r1")) == "loaded"
    assert stored_seqs(conn, "r1") == list(range(0, 16, 2))
    source = read_recording(conn, "r1")
    assert source is not None and [s.seq for s in source.segments] == list(range(0, 16, 2))

    chunk_recording(conn, "r1", SPEC, PARAMS)
    chunks = conn.execute(
        "SELECT first_seq, last_seq, content FROM embed_assets.chunks WHERE recording_id = 'r1' ORDER BY chunk_index"
    ).fetchall()
    assert len(chunks) > 3
    for first, last, content in chunks:
        # the citation matches the source: the chunk's text starts in turn `first` and ends in turn `last`
        assert content.split(": ", 1)[1].startswith(f"turn {first} ") and first % 2 == last % 2 == 0
    assert any(b[0] > a[1] + 1 for a, b in zip(chunks, chunks[1:], strict=False))

    # The same speech after one more blank turn: every seq moves, so the recording has changed.
    assert upsert_transcript(conn, noisy(tmp_path, "r1", lead_blanks=1)) == "changed"
    assert stored_seqs(conn, "r1") == list(range(1, 17, 2))


def test_integrity_passes_with_skipped_turns_and_catches_real_gaps(conn: psycopg.Connection, tmp_path: Path) -> None:
    upsert_transcript(conn, noisy(tmp_path, "r1"))
    chunk_recording(conn, "r1", SPEC, PARAMS)
    embed_recording(conn, "r1", HashEmbedder(), insert_batch_size=50, statement_timeout_ms=30_000)
    ok = check_integrity(conn, SPEC.model_id)
    assert ok.ok and ok.embedded_recordings == 1 and ok.coverage_gaps == 0

    def gaps_after(update: str) -> int:
        with conn.transaction():
            conn.execute(update)
            found = check_integrity(conn, SPEC.model_id)
            raise psycopg.Rollback  # undo the corruption for the next case
        assert found.chunk_count_mismatch == 0 and found.examples == ["r1"]
        return found.coverage_gaps

    # One chunk per speech turn here: chunk k covers [2k, 2k]; the stored seqs are 0, 2, ..., 14.
    spans = conn.execute("SELECT first_seq, last_seq FROM embed_assets.chunks ORDER BY chunk_index").fetchall()
    assert spans == [(2 * k, 2 * k) for k in range(8)] and stored_seqs(conn, "r1") == list(range(0, 16, 2))
    corruptions = [
        (
            "segment 0 uncovered, before every chunk",
            "UPDATE embed_assets.chunks SET first_seq = 2, last_seq = 2 WHERE chunk_index = 0",
        ),
        (
            "segment 2 uncovered, between chunks",
            "UPDATE embed_assets.chunks SET first_seq = 0, last_seq = 0 WHERE chunk_index = 1",
        ),
        (
            "segment 14 uncovered, after every chunk",
            "UPDATE embed_assets.chunks SET first_seq = 12, last_seq = 12 WHERE last_seq = 14",
        ),
        (
            "a chunk ending on skipped turn 1 (not stored)",
            "UPDATE embed_assets.chunks SET last_seq = 1 WHERE chunk_index = 0",
        ),
        (
            "a chunk reaching past the last stored segment",
            "UPDATE embed_assets.chunks SET last_seq = 16 WHERE last_seq = 14",
        ),
        (
            "a chunk ending before it starts",
            "UPDATE embed_assets.chunks SET first_seq = 4, last_seq = 2 WHERE chunk_index = 2",
        ),
    ]
    for what, change in corruptions:
        assert gaps_after(change) == 1, what
    # and the same with the chunks of the recording all gone (its plan still says how many there were)
    with conn.transaction():
        conn.execute("DELETE FROM embed_assets.chunks")
        found = check_integrity(conn, SPEC.model_id)
        raise psycopg.Rollback
    assert found.coverage_gaps == 1 and found.chunk_count_mismatch == 1
    assert check_integrity(conn, SPEC.model_id).ok
