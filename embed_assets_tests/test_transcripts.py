"""Import formats and every kind of bad input: each named with its place and its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embed_assets.lib.transcripts import (
    MAX_SEGMENT_CHARS,
    Segment,
    Transcript,
    parse_file,
    reject_duplicates,
    validate_recording_id,
)

GOOD = {
    "recording_id": "rec-001",
    "title": "Acme renewal call",
    "started_at": "2026-01-09T16:00:00Z",
    "segments": [
        {"speaker": "Dana", "text": "Thanks for joining.", "start_s": 0.0, "end_s": 2.1},
        {"speaker": "Lee", "text": "Happy to be here."},
    ],
}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def test_json_round_trip(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "a.json", json.dumps(GOOD)))
    assert parsed.problems == []
    (t,) = parsed.transcripts
    assert t.recording_id == "rec-001" and t.title == "Acme renewal call"
    assert t.segments[0] == Segment("Dana", "Thanks for joining.", 0.0, 2.1)
    assert t.segments[1].start_s is None and t.started_at is not None


def test_jsonl_names_the_line_of_each_bad_record(tmp_path: Path) -> None:
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({**GOOD, "recording_id": "rec-002"}),
        json.dumps({"segments": []}),
    ]
    parsed = parse_file(write(tmp_path, "b.jsonl", "\n".join(lines)))
    assert [t.recording_id for t in parsed.transcripts] == ["rec-001", "rec-002"]
    wheres = sorted(str(p) for p in parsed.problems)
    assert wheres[0].startswith(f"{tmp_path / 'b.jsonl'}:2: malformed JSON")
    assert wheres[1].startswith(f"{tmp_path / 'b.jsonl'}:4") and "recording_id" in wheres[1]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"segments": GOOD["segments"]}, 'missing "recording_id"'),
        ({"recording_id": "r1"}, 'missing "segments"'),
        ({"recording_id": "r1", "segments": []}, "empty transcript"),
        ({"recording_id": "r1", "segments": [{"speaker": "A"}]}, 'segment 0: missing "text"'),
        (
            {"recording_id": "r1", "segments": [{"speaker": "A", "text": "   "}]},
            "segment 0: segment has no text",
        ),
        ({"recording_id": "r1", "segments": [{"speaker": "A", "text": 5}]}, '"text" must be a string'),
        ({"recording_id": "", "segments": GOOD["segments"]}, "recording_id is empty"),
        ({"recording_id": "x" * 201, "segments": GOOD["segments"]}, "201 characters long; the limit is 200"),
        ({"recording_id": "a...b", "segments": GOOD["segments"]}, "Dagster partition keys cannot hold"),
        ({"recording_id": "a,b", "segments": GOOD["segments"]}, "Dagster partition keys cannot hold"),
        ({"recording_id": "a\nb", "segments": GOOD["segments"]}, "control characters"),
        ({"recording_id": 7, "segments": GOOD["segments"]}, "must be a string"),
        (
            {"recording_id": "r1", "segments": [{"speaker": "A", "text": "x", "start_s": 5, "end_s": 1}]},
            "end_s 1.0 is before start_s 5.0",
        ),
        ({"recording_id": "r1", "segments": [{"speaker": "A", "text": "x", "start_s": -1}]}, "non-negative"),
        ({"recording_id": "r1", "started_at": "yesterday", "segments": GOOD["segments"]}, "ISO 8601"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_records_are_rejected_with_the_reason(tmp_path: Path, obj: object, expected: str) -> None:
    parsed = parse_file(write(tmp_path, "bad.json", json.dumps(obj)))
    assert parsed.transcripts == []
    assert len(parsed.problems) == 1 and parsed.problems[0].fatal
    assert expected in str(parsed.problems[0]) and str(tmp_path / "bad.json") in str(parsed.problems[0])


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "m.json", '{"recording_id": "r1",\n "segments": [}'))
    assert parsed.transcripts == []
    assert str(parsed.problems[0]).startswith(f"{tmp_path / 'm.json'}:2: malformed JSON")


def test_invalid_utf8_is_rejected_with_the_byte_offset(tmp_path: Path) -> None:
    raw = json.dumps(GOOD).encode().replace(b"Thanks", b"Th\xffanks")
    parsed = parse_file(write(tmp_path, "u.json", raw))
    assert parsed.transcripts == []
    assert "not valid UTF-8 (byte" in str(parsed.problems[0]) and "re-encode" in str(parsed.problems[0])


def test_nul_and_control_characters_are_stripped_with_a_warning(tmp_path: Path) -> None:
    obj = {"recording_id": "r1", "segments": [{"speaker": "A\x00", "text": "hel\x00lo\x07 world\ttab"}]}
    parsed = parse_file(write(tmp_path, "c.json", json.dumps(obj)))
    (t,) = parsed.transcripts
    assert t.segments[0].text == "hello world\ttab" and t.segments[0].speaker == "A"
    (warning,) = parsed.problems
    assert not warning.fatal and "stripped 3 control character(s)" in str(warning) and "segment 0" in str(warning)


def test_a_1mb_segment_is_rejected(tmp_path: Path) -> None:
    obj = {"recording_id": "r1", "segments": [{"speaker": "A", "text": "word " * 210_000}]}
    parsed = parse_file(write(tmp_path, "big.json", json.dumps(obj)))
    assert parsed.transcripts == []
    assert f"the limit is {MAX_SEGMENT_CHARS:,}" in str(parsed.problems[0]) and "Split the turn" in str(
        parsed.problems[0]
    )


def test_hostile_but_valid_ids_and_text_are_kept_verbatim(tmp_path: Path) -> None:
    rid = 'rec\'; DROP TABLE recordings; -- "quoted" ✓'
    text = "مرحبا بكم 👋 'quotes' \"double\" ; DROP TABLE x; --"
    obj = {"recording_id": rid, "segments": [{"speaker": "Ωmega", "text": text}]}
    (t,) = parse_file(write(tmp_path, "h.json", json.dumps(obj))).transcripts
    assert t.recording_id == rid and t.segments[0].text == text


def test_webvtt_with_voice_tags(tmp_path: Path) -> None:
    vtt = (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.500\n<v Dana>Thanks for joining.</v>\n\n"
        "00:00:02.500 --> 00:00:05.000\n<v.loud Lee>Glad to.\nTwo lines.</v>\n\n"
        "01:00:00.000 --> 01:00:01.000\nNo speaker here\n"
    )
    (t,) = parse_file(write(tmp_path, "call-7.vtt", vtt)).transcripts
    assert t.recording_id == "call-7"
    assert [(s.speaker, s.text, s.start_s, s.end_s) for s in t.segments] == [
        ("Dana", "Thanks for joining.", 0.0, 2.5),
        ("Lee", "Glad to.\nTwo lines.", 2.5, 5.0),
        ("unknown", "No speaker here", 3600.0, 3601.0),
    ]


def test_srt_with_speaker_prefix(tmp_path: Path) -> None:
    srt = "1\n00:00:01,000 --> 00:00:02,000\nDana: Hello there.\n\n2\n00:00:02,000 --> 00:00:03,500\nLee: Hi!\n"
    (t,) = parse_file(write(tmp_path, "call-8.srt", srt)).transcripts
    assert [(s.speaker, s.text, s.start_s) for s in t.segments] == [
        ("Dana", "Hello there.", 1.0),
        ("Lee", "Hi!", 2.0),
    ]


def test_vtt_bad_timestamp_and_header(tmp_path: Path) -> None:
    bad = parse_file(write(tmp_path, "x.vtt", "WEBVTT\n\n00:00:aa --> 00:00:01.000\nhi\n"))
    assert bad.transcripts == [] and ":3:" in str(bad.problems[0]) and "timestamp" in str(bad.problems[0])
    nohead = parse_file(write(tmp_path, "y.vtt", "00:00:00.000 --> 00:00:01.000\nhi\n"))
    assert nohead.transcripts == [] and 'first line must be "WEBVTT"' in str(nohead.problems[0])


def test_empty_vtt_is_an_empty_transcript(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "e.vtt", "WEBVTT\n\n"))
    assert parsed.transcripts == [] and "empty transcript" in str(parsed.problems[0])


def test_duplicate_ids_in_one_batch_reject_every_copy() -> None:
    a = Transcript("r1", (Segment("A", "x"),), source="a.json")
    b = Transcript("r1", (Segment("A", "y"),), source="b.json")
    c = Transcript("r2", (Segment("A", "z"),), source="c.json")
    keep, problems = reject_duplicates([a, b, c])
    assert keep == [c]
    assert len(problems) == 2 and all("appears 2 times" in str(p) and "a.json, b.json" in str(p) for p in problems)


def test_content_hash_tracks_segments_only() -> None:
    a = Transcript("r1", (Segment("A", "x", 0.0, 1.0),), title="one")
    assert a.content_hash == Transcript("r1", (Segment("A", "x", 0.0, 1.0),), title="two").content_hash
    assert a.content_hash != Transcript("r1", (Segment("A", "x!", 0.0, 1.0),)).content_hash
    assert a.content_hash != Transcript("r1", (Segment("B", "x", 0.0, 1.0),)).content_hash


@pytest.mark.parametrize("rid", ["rec-001", "2026/01/09 call #3", "o'brien;--", "ümlaut ✓"])
def test_valid_ids(rid: str) -> None:
    assert validate_recording_id(rid) is None
