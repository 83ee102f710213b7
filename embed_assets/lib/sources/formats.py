"""Turn one source row's transcript into segments: a JSON array of turns (field names configurable), plain
`Speaker: text` lines, WebVTT, SRT, or rows of turns. The same validation as `embed-assets load`
(lib/transcripts.py): turns without speech are skipped and keep their source position as `seq`, control
characters are stripped, an oversized turn is refused. A row that cannot be read raises UnreadableSourceRow,
which fails that recording alone and names the row and the fix."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from embed_assets.lib.errors import EmbedAssetsError
from embed_assets.lib.sources.definition import JsonFields, SourceDefinition
from embed_assets.lib.transcripts import InputProblem, Segment, make_segment, parse_cues

UNREADABLE = "unreadable source row:"  # how every such message starts (recording_errors.unreadable)
MAX_TURNS = 100_000  # a transcript with more turns is a broken export, not a call


class UnreadableSourceRow(EmbedAssetsError):
    """A source row this project cannot turn into a transcript. Retrying cannot help; fixing the row (or the
    source file's settings) changes its content hash and the sensor embeds it again."""


def unreadable(definition: SourceDefinition, recording_id: str, problem: str) -> UnreadableSourceRow:
    fix = (
        f"fix the row in the source, or `transcripts.format`/`fields`/`turns` in {definition.path}"
        if definition.transcripts_sql
        else f"fix the rows in the source, or the `turns` query in {definition.path}"
    )
    return UnreadableSourceRow(
        f"{UNREADABLE} recording {recording_id!r} ({definition.name}, {definition.reads}): {problem}; {fix}"
    )


_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})(?:[.,](\d{1,3}))?")


def seconds(value: Any, name: str) -> float | None:
    """Seconds from a number or a clock string (``HH:MM:SS[.mmm]`` or ``MM:SS``)."""
    if isinstance(value, str):
        m = _CLOCK.fullmatch(value.strip())
        if not m:
            raise ValueError(f"{name} {value!r} is neither a number of seconds nor HH:MM:SS")
        h, mi, s, ms = m.groups()
        return int(h or 0) * 3600 + int(mi) * 60 + int(s) + int((ms or "0").ljust(3, "0")) / 1000
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds or HH:MM:SS, got {value!r}")
    return float(value)


def _get(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _turns_from_json(value: Any, d: SourceDefinition) -> list[Any]:
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if d.turns_key:
        if not isinstance(value, dict):
            got = type(value).__name__
            raise ValueError(f"expected a JSON object holding the turns under {d.turns_key!r}, got {got}")
        value = _get(value, d.turns_key)
        if value is None:
            raise ValueError(f"the JSON object has no {d.turns_key!r} (transcripts.turns)")
    if isinstance(value, dict):
        keys = ", ".join(sorted(value)[:8])
        raise ValueError(f"the JSON value is an object (keys: {keys}); set transcripts.turns to the turn array's key")
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON array of turns, got {type(value).__name__}")
    return value


def _json_segment(turn: Any, seq: int, f: JsonFields, problems: list[InputProblem]) -> Segment | None:
    if not isinstance(turn, dict):
        raise ValueError(f"turn {seq} is a {type(turn).__name__}, not an object with speaker and text")
    text = _get(turn, f.text)
    if text is None:
        raise ValueError(f"turn {seq} has no {f.text!r} (transcripts.fields.text); its keys: {', '.join(sorted(turn))}")
    if not isinstance(text, str):
        raise ValueError(f"turn {seq}: {f.text!r} must be a string, got {type(text).__name__}")
    speaker = _get(turn, f.speaker)
    if isinstance(speaker, dict):
        raise ValueError(
            f"turn {seq}: {f.speaker!r} is an object (keys: {', '.join(sorted(speaker))}); point "
            f"transcripts.fields.speaker at its name, e.g. {f.speaker}.{next(iter(sorted(speaker)), 'name')}"
        )
    speaker = "unknown" if speaker is None else str(speaker)
    start = seconds(_get(turn, f.start_s), f"turn {seq} {f.start_s}")
    end = seconds(_get(turn, f.end_s), f"turn {seq} {f.end_s}")
    return make_segment(seq, speaker, text, start, end, f"turn {seq}", problems)


_LINE = re.compile(r"^\s*(?:\[?((?:\d+:)?\d{1,2}:\d{2}(?:[.,]\d{1,3})?)\]?\s+)?([^:\n]{1,60}?):\s+(.*)$")


def _text_turns(value: str) -> list[tuple[str, str, float | None]]:
    """`Speaker: text` lines, optionally prefixed by a time (``[00:01:23] Dana: ...``). A line without a
    speaker continues the turn before it (wrapped text); blank lines separate nothing."""
    turns: list[tuple[str, str, float | None]] = []
    for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m:
            start = seconds(m.group(1), "time") if m.group(1) else None
            turns.append((m.group(2).strip(), m.group(3), start))
        elif turns:
            speaker, text, start = turns[-1]
            turns[-1] = (speaker, f"{text} {line.strip()}", start)
        else:
            turns.append(("unknown", line.strip(), None))
    return turns


def segments_from_value(d: SourceDefinition, recording_id: str, value: Any) -> tuple[Segment, ...]:
    """The segments of one transcript value (format ``d.format``)."""
    if value is None:
        raise unreadable(d, recording_id, "the transcript is NULL")
    problems: list[InputProblem] = []
    try:
        if d.format == "json":
            turns = _turns_from_json(value, d)
            _limit(len(turns))
            segments = [_json_segment(t, i, d.fields, problems) for i, t in enumerate(turns)]
        else:
            if isinstance(value, bytes | bytearray | memoryview):
                value = bytes(value).decode("utf-8")
            if not isinstance(value, str):
                raise ValueError(f"expected text for format {d.format}, got {type(value).__name__} (a JSON column?)")
            if d.format == "text":
                lines = _text_turns(value)
                _limit(len(lines))
                segments = [
                    make_segment(i, sp, tx, st, None, f"turn {i}", problems) for i, (sp, tx, st) in enumerate(lines)
                ]
            else:
                parsed = parse_cues("transcript", recording_id, value, d.format == "vtt")
                fatal = [p for p in parsed.problems if p.fatal]
                if fatal:
                    raise ValueError("; ".join(str(p) for p in fatal[:3]))
                segments = list(parsed.transcripts[0].segments) if parsed.transcripts else []
    except (ValueError, UnicodeDecodeError) as e:
        raise unreadable(d, recording_id, str(e)) from None
    return _speech(d, recording_id, segments, len(segments))


def segments_from_rows(d: SourceDefinition, recording_id: str, rows: Sequence[tuple[Any, ...]]) -> tuple[Segment, ...]:
    """The segments of rows ``(seq, speaker, start_s, end_s, text)`` ordered by seq."""
    problems: list[InputProblem] = []
    segments: list[Segment | None] = []
    try:
        _limit(len(rows))
        last = -1
        for seq, speaker, start, end, text in rows:
            if isinstance(seq, bool) or not isinstance(seq, int) or seq <= last:
                raise ValueError(f"seq must be whole numbers, increasing and unique (got {seq!r} after {last})")
            if text is None or not isinstance(text, str):
                raise ValueError(f"turn {seq}: text must be a non-NULL string")
            speaker = "unknown" if speaker is None else str(speaker)
            start_s, end_s = seconds(start, "start_s"), seconds(end, "end_s")
            segments.append(make_segment(seq, speaker, text, start_s, end_s, f"turn {seq}", problems))
            last = seq
    except ValueError as e:
        raise unreadable(d, recording_id, str(e)) from None
    return _speech(d, recording_id, segments, len(rows))


def _limit(n: int) -> None:
    if n > MAX_TURNS:
        raise ValueError(f"{n:,} turns; the limit is {MAX_TURNS:,} (a broken export?)")


def _speech(d: SourceDefinition, recording_id: str, segments: list[Segment | None], turns: int) -> tuple[Segment, ...]:
    kept = tuple(s for s in segments if s is not None)
    if not kept:
        what = "no turns" if turns == 0 else f"no speech in any of its {turns} turn(s)"
        raise unreadable(d, recording_id, f"{what}: nothing to embed")
    return kept
