"""Import formats and every kind of bad input: each named with its place and its fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from embed_assets.lib.transcripts import (
    MAX_LISTED_TURNS,
    MAX_SEGMENT_CHARS,
    Segment,
    Transcript,
    is_non_speech,
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
    assert t.segments[0] == Segment("Dana", "Thanks for joining.", 0.0, 2.1, seq=0)
    assert t.segments[1].start_s is None and t.segments[1].seq == 1 and t.started_at is not None


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
            "recording 'r1' has no speech to embed: all 1 turn(s) are empty or non-speech",
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


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t",
        "{disfmarker}",
        "{vocalsound} {pause} {gap}",
        "{comment} {nonvocalsound}",
        "[Laughter.]",
        "[Inaudible.] [Laughter.]",
        "(inaudible)",
        "<noise>",
        "♪",
        "♪ ♪ ...",
        "{vocalsound} - [Laughter.] ?",
    ],
)
def test_non_speech(text: str) -> None:
    assert is_non_speech(text)


@pytest.mark.parametrize(
    "text",
    ["Yes.", "Mm-hmm.", "[Laughter.] Yes.", "{vocalsound} okay {disfmarker}", "42", "(I think so)", "你好", "مرحبا"],
)
def test_speech(text: str) -> None:
    assert not is_non_speech(text)


# Turns 0, 2, 5 and 7 have speech; the rest are empty, blank or only annotation markers.
NOISY_TURNS = [
    "{vocalsound} Okay, let's start.",
    "",
    "The renewal is due in March.",
    "   ",
    "{disfmarker} {vocalsound}",
    "[Laughter.] Right.",
    "[Inaudible.] (inaudible) <noise> ♪",
    "Thanks, bye.",
]


def noisy(rid: str) -> dict[str, object]:
    return {
        "recording_id": rid,
        "segments": [
            {"speaker": f"S{i % 2}", "text": t, "start_s": i, "end_s": i + 1} for i, t in enumerate(NOISY_TURNS)
        ],
    }


def assert_kept_with_source_seqs(t: Transcript) -> None:
    assert [(s.seq, s.text, s.start_s) for s in t.segments] == [
        (0, "{vocalsound} Okay, let's start.", 0.0),  # kept turns keep their text verbatim, markers included
        (2, "The renewal is due in March.", 2.0),
        (5, "[Laughter.] Right.", 5.0),
        (7, "Thanks, bye.", 7.0),
    ]


def test_json_skips_turns_without_speech_and_keeps_source_positions(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "n.json", json.dumps(noisy("r1"))))
    (t,) = parsed.transcripts
    assert_kept_with_source_seqs(t)
    (warning,) = parsed.problems
    assert not warning.fatal
    assert str(warning) == f"{tmp_path / 'n.json'} (r1): skipped 4 turn(s) with no speech: 1, 3, 4, 6"


def test_jsonl_warns_once_per_recording_with_its_own_turns(tmp_path: Path) -> None:
    other = {"recording_id": "r2", "segments": [{"speaker": "A", "text": "Hi."}, {"speaker": "B", "text": " "}]}
    lines = [json.dumps(noisy("r1")), json.dumps(GOOD), json.dumps(other)]
    parsed = parse_file(write(tmp_path, "n.jsonl", "\n".join(lines)))
    r1, good, r2 = parsed.transcripts
    assert_kept_with_source_seqs(r1)
    assert [s.seq for s in good.segments] == [0, 1] and [s.seq for s in r2.segments] == [0]
    assert [(str(p), p.fatal) for p in parsed.problems] == [
        (f"{tmp_path / 'n.jsonl'}:1 (r1): skipped 4 turn(s) with no speech: 1, 3, 4, 6", False),
        (f"{tmp_path / 'n.jsonl'}:3 (r2): skipped 1 turn(s) with no speech: 1", False),
    ]


def test_vtt_skips_cues_without_speech_by_cue_position(tmp_path: Path) -> None:
    vtt = (
        "WEBVTT\n\n"
        "1\n00:00:00.000 --> 00:00:01.000\n<v Dana>Hello.</v>\n\n"
        "2\n00:00:01.000 --> 00:00:02.000\n<v Lee>[Inaudible.]</v>\n\n"
        "3\n00:00:02.000 --> 00:00:03.000\n<v Lee><noise></v>\n\n"
        "00:00:03.000 --> 00:00:04.000\n♪ ♪\n\n"
        "00:00:04.000 --> 00:00:05.000\n<v Dana>{vocalsound} See you.</v>\n"
    )
    parsed = parse_file(write(tmp_path, "call-9.vtt", vtt))
    (t,) = parsed.transcripts
    assert [(s.seq, s.speaker, s.text, s.start_s) for s in t.segments] == [
        (0, "Dana", "Hello.", 0.0),
        (4, "Dana", "{vocalsound} See you.", 4.0),
    ]
    assert [str(p) for p in parsed.problems] == [
        f"{tmp_path / 'call-9.vtt'}: skipped 3 turn(s) with no speech: 1, 2, 3"
    ]


def test_srt_skips_cues_without_speech_by_cue_position(tmp_path: Path) -> None:
    srt = (
        "1\n00:00:01,000 --> 00:00:02,000\nDana: (inaudible)\n\n"
        "2\n00:00:02,000 --> 00:00:03,000\nLee: Hi!\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\n \n\n"
        "4\n00:00:04,000 --> 00:00:05,000\nDana: [Laughter.] Good one.\n"
    )
    parsed = parse_file(write(tmp_path, "call-10.srt", srt))
    (t,) = parsed.transcripts
    assert [(s.seq, s.speaker, s.text) for s in t.segments] == [(1, "Lee", "Hi!"), (3, "Dana", "[Laughter.] Good one.")]
    assert [str(p) for p in parsed.problems] == [f"{tmp_path / 'call-10.srt'}: skipped 2 turn(s) with no speech: 0, 2"]


def test_the_warning_lists_a_bounded_number_of_turns(tmp_path: Path) -> None:
    turns = [{"speaker": "A", "text": "{gap}"} for _ in range(MAX_LISTED_TURNS + 7)] + [{"speaker": "A", "text": "Hi."}]
    parsed = parse_file(write(tmp_path, "g.json", json.dumps({"recording_id": "r1", "segments": turns})))
    (t,) = parsed.transcripts
    assert [s.seq for s in t.segments] == [MAX_LISTED_TURNS + 7]
    (warning,) = parsed.problems
    listed = ", ".join(str(i) for i in range(MAX_LISTED_TURNS))
    assert warning.message == f"skipped {MAX_LISTED_TURNS + 7} turn(s) with no speech: {listed}, ... (7 more)"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("quiet.json", json.dumps({"recording_id": "quiet", "segments": [{"text": ""}, {"text": "[Laughter.]"}]})),
        ("quiet.jsonl", json.dumps({"recording_id": "quiet", "segments": [{"text": " "}, {"text": "{gap}"}]})),
        (
            "quiet.vtt",
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n<v A>{vocalsound}</v>\n\n00:00:01.000 --> 00:00:02.000\n♪\n",
        ),
        (
            "quiet.srt",
            "1\n00:00:00,000 --> 00:00:01,000\nA: (inaudible)\n\n2\n00:00:01,000 --> 00:00:02,000\n<noise>\n",
        ),
    ],
)
def test_a_recording_without_any_speech_is_rejected_by_name(tmp_path: Path, name: str, content: str) -> None:
    parsed = parse_file(write(tmp_path, name, content))
    assert parsed.transcripts == []
    (problem,) = parsed.problems
    assert problem.fatal and str(tmp_path / name) in str(problem)
    assert "recording 'quiet' has no speech to embed: all 2 turn(s) are empty or non-speech" in str(problem)


def test_segments_without_seq_take_their_position_and_seqs_must_increase() -> None:
    t = Transcript("r1", (Segment("A", "x"), Segment("A", "y")))
    assert [s.seq for s in t.segments] == [0, 1]
    assert Transcript("r1", (Segment("A", "x", seq=3), Segment("A", "y", seq=9))).segments[1].seq == 9
    for seqs in ([2, 2], [3, 1], [-1, 0]):
        with pytest.raises(ValueError, match="seqs must increase"):
            Transcript("r1", tuple(Segment("A", "x", seq=q) for q in seqs))


def test_content_hash_changes_with_the_skip_pattern_and_is_stable_without_skips() -> None:
    segs = [("A", "x", 0.0, 1.0), ("B", "y", 1.0, 2.0)]
    plain = Transcript("r1", tuple(Segment(*s) for s in segs))
    # The hash of a recording without skipped turns is what it was before segments carried a seq, so an
    # upgrade does not mark every stored recording changed.
    before = hashlib.sha256(b"".join(json.dumps(list(s)).encode() + b"\n" for s in segs)).hexdigest()
    assert plain.content_hash == before
    assert Transcript("r1", tuple(Segment(*s, seq=i) for i, s in enumerate(segs))).content_hash == before
    skipped_0 = Transcript("r1", tuple(Segment(*s, seq=q) for s, q in zip(segs, [0, 2], strict=True)))
    skipped_1 = Transcript("r1", tuple(Segment(*s, seq=q) for s, q in zip(segs, [1, 2], strict=True)))
    assert len({plain.content_hash, skipped_0.content_hash, skipped_1.content_hash}) == 3
