"""The source definition file and the transcript formats a source row may hold (no database here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embed_assets.lib.errors import ConfigError
from embed_assets.lib.sources.definition import load_definition
from embed_assets.lib.sources.formats import UnreadableSourceRow, segments_from_rows, segments_from_value

FATHOM = """
name: fathom
database_url: ${FATHOM_DATABASE_URL}
recordings: SELECT id AS recording_id, title, started_at, updated_at FROM fathom_calls;
transcripts:
  query: SELECT call_id AS recording_id, transcript FROM fathom_transcripts
  format: json
  fields: {speaker: speaker.display_name, start_s: timestamp}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "source.yaml"
    p.write_text(text)
    return p


def definition(tmp_path: Path, fmt: str = "json", **extra: object):
    body = {"recordings": "SELECT 1 AS recording_id", "transcripts": {"query": "SELECT 1", "format": fmt, **extra}}
    return load_definition(write(tmp_path, json.dumps(body)))  # JSON is YAML


def test_fathom_definition_substitutes_the_url_and_keeps_it_out_of_repr(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FATHOM_DATABASE_URL", "postgresql://reader:s3cret@db.example/app")
    d = load_definition(write(tmp_path, FATHOM))
    assert d.database_url == "postgresql://reader:s3cret@db.example/app"
    assert "s3cret" not in repr(d)
    assert d.recordings_sql.endswith("FROM fathom_calls")  # the trailing semicolon would break the subquery
    assert (d.fields.speaker, d.fields.text, d.fields.start_s) == ("speaker.display_name", "text", "timestamp")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (FATHOM, "${FATHOM_DATABASE_URL}, which is not set"),
        ("recordings: SELECT 1\n", "missing `transcripts`"),
        ("recordings: SELECT 1\ntranscripts: {query: SELECT 1, format: xml}\n", "use one of json, text, vtt, srt"),
        ("recordings: SELECT 1\nturns: SELECT 1\ntranscripts: SELECT 1\n", "not both"),
        ("recording: SELECT 1\nturns: SELECT 1\n", "unknown key(s) recording"),
        ("recordings: [\n", "not valid YAML at line"),
        ("recordings: SELECT 1\ntranscripts: {query: SELECT 1, format: text, fields: {text: t}}\n", "json only"),
        ("turns: SELECT 1\n", "`recordings` must be a SELECT"),
        ("recordings: SELECT 1\nturns: SELECT 1\nreconcile_seconds: 0\n", "positive number"),
    ],
)
def test_bad_definitions_name_the_key_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="source file .*source.yaml") as e:
        load_definition(write(tmp_path, text))
    assert expected in str(e.value)


def test_parse_digest_changes_with_the_mapping_not_the_query(tmp_path: Path) -> None:
    a = definition(tmp_path, fields={"speaker": "who"})
    b = definition(tmp_path, fields={"speaker": "name"})
    c = load_definition(
        write(
            tmp_path,
            json.dumps({"recordings": "SELECT 2", "transcripts": {"query": "SELECT 2", "fields": {"speaker": "who"}}}),
        )
    )
    assert a.parse_digest != b.parse_digest and a.parse_digest == c.parse_digest


def test_json_turns_with_paths_clock_times_and_empty_turns(tmp_path: Path) -> None:
    d = definition(tmp_path, fields={"speaker": "speaker.display_name", "start_s": "timestamp"})
    value = json.dumps(
        [
            {"speaker": {"display_name": "Dana"}, "text": "Thanks for joining.", "timestamp": "00:00:05"},
            {"speaker": {"display_name": "Lee"}, "text": "", "timestamp": "00:00:07"},  # empty: skipped, seq kept
            {"speaker": {"display_name": "Lee"}, "text": "{vocalsound}"},  # non-speech: skipped
            {"speaker": {"display_name": "Lee"}, "text": "Happy to.", "timestamp": "1:02:03.5"},
        ]
    )
    segs = segments_from_value(d, "call-1", value)
    assert [(s.seq, s.speaker, s.text, s.start_s) for s in segs] == [
        (0, "Dana", "Thanks for joining.", 5.0),
        (3, "Lee", "Happy to.", 3723.5),
    ]
    assert segments_from_value(d, "call-1", json.loads(value)) == segs  # a jsonb column arrives decoded


def test_json_object_value_with_a_turns_key(tmp_path: Path) -> None:
    d = definition(tmp_path, turns="data.segments")
    segs = segments_from_value(d, "c", {"data": {"segments": [{"speaker": "A", "text": "hi there"}]}})
    assert [s.text for s in segs] == ["hi there"]


@pytest.mark.parametrize(
    ("value", "extra", "expected"),
    [
        (None, {}, "the transcript is NULL"),
        ('[{"speaker": "A", "text": "hi"', {}, "malformed JSON: Expecting ',' delimiter (line 1, column 31)"),
        ('{"segments": []}', {}, "set transcripts.turns to the turn array's key"),
        ('[{"speaker": "A"}]', {}, "turn 0 has no 'text' (transcripts.fields.text)"),
        ('[{"speaker": {"display_name": "A"}, "text": "hi"}]', {}, "e.g. speaker.display_name"),
        ('[{"speaker": "A", "text": "hi", "start_s": "soon"}]', {}, "neither a number of seconds nor HH:MM:SS"),
        ('[{"speaker": "A", "text": "' + "x" * 500_001 + '"}]', {}, "the limit is 500,000"),
        ('[{"speaker": "A", "text": "  "}]', {}, "no speech in any of its 1 turn(s)"),
        ("[]", {}, "no turns"),
    ],
)
def test_unreadable_json_rows_name_the_row_and_the_fix(tmp_path: Path, value, extra, expected: str) -> None:
    d = definition(tmp_path, **extra)
    with pytest.raises(UnreadableSourceRow) as e:
        segments_from_value(d, "call-9", value)
    msg = str(e.value)
    assert msg.startswith("unreadable source row: recording 'call-9' (source, transcripts query): ")
    assert expected in msg and f"in {d.path}" in msg


def test_plain_text_lines(tmp_path: Path) -> None:
    d = definition(tmp_path, "text")
    text = "Dana: Thanks for joining.\n\n[00:00:07] Lee: Happy to,\nwrapped line.\nLee: [laughs]\nDana: Next item."
    segs = segments_from_value(d, "c", text)
    assert [(s.seq, s.speaker, s.text, s.start_s) for s in segs] == [
        (0, "Dana", "Thanks for joining.", None),
        (1, "Lee", "Happy to, wrapped line.", 7.0),
        (3, "Dana", "Next item.", None),
    ]


def test_webvtt_and_srt_values(tmp_path: Path) -> None:
    vtt = "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\n<v Dana>Hello there.\n\n00:00:03.000 --> 00:00:04.000\nLee: Hi.\n"
    srt = "1\n00:00:01,000 --> 00:00:02,000\nDana: Hello.\n\n2\n00:00:02,000 --> 00:00:03,000\n[music]\n"
    assert [(s.speaker, s.text, s.start_s) for s in segments_from_value(definition(tmp_path, "vtt"), "c", vtt)] == [
        ("Dana", "Hello there.", 1.0),
        ("Lee", "Hi.", 3.0),
    ]
    assert [(s.seq, s.text) for s in segments_from_value(definition(tmp_path, "srt"), "c", srt)] == [(0, "Hello.")]
    with pytest.raises(UnreadableSourceRow, match="not a WebVTT file"):
        segments_from_value(definition(tmp_path, "vtt"), "c", srt)
    with pytest.raises(UnreadableSourceRow, match="expected text for format vtt, got list"):
        segments_from_value(definition(tmp_path, "vtt"), "c", [1])


def test_turn_rows(tmp_path: Path) -> None:
    d = load_definition(write(tmp_path, "recordings: SELECT 1\nturns: SELECT 1\n"))
    segs = segments_from_rows(
        d, "c", [(0, "A", 0.0, 1.0, "hi there"), (1, None, None, None, ""), (4, "B", 2, 3, "yes")]
    )
    assert [(s.seq, s.speaker, s.text) for s in segs] == [(0, "A", "hi there"), (4, "B", "yes")]
    with pytest.raises(UnreadableSourceRow, match="increasing and unique"):
        segments_from_rows(d, "c", [(1, "A", None, None, "a"), (1, "A", None, None, "b")])
    with pytest.raises(UnreadableSourceRow, match="turns query.*end_s 1.0 is before start_s 2.0"):
        segments_from_rows(d, "c", [(0, "A", 2, 1, "hi")])
