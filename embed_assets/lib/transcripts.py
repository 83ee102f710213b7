"""Transcript import formats (JSON, JSONL, WebVTT, SRT) and their validation. No database here.

Every problem becomes an `InputProblem` naming the file (and line or segment) and what to change; a file's
good records are still returned. NUL bytes and other control characters are *stripped* from text (Postgres
text cannot hold NUL, and one stray byte should not cost a whole call) and reported as warnings. Turns with
no speech (empty, blank, or only annotation markers: see `is_non_speech`) are *skipped*, with one warning
per recording; the turns kept keep their source position as `seq`, so citations match the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

MAX_ID_LENGTH = 200
MAX_SEGMENT_CHARS = 500_000  # ~120k tokens: a 1 MB single "segment" is a broken export, not a turn
# A speaker's name starts every line of a chunk ("Name: words"): a name is a label, and a long one would eat the
# model's window (a 400-word "name" once left no room for the turn's words; chunking.py counts it too).
MAX_SPEAKER_CHARS = 100
MAX_TITLE_CHARS = 1_000
# The largest file `load` reads: ~20x the longest real transcript export; a bigger file is not a transcript.
MAX_FILE_BYTES = 200 * 1024 * 1024
# started_at must survive a round trip through Postgres and Python in any time zone: years 1 and 9999 with an
# offset fall outside what Python can read back, and poisoned every later load of the id.
MIN_STARTED_AT = datetime(1900, 1, 1, tzinfo=UTC)
MAX_STARTED_AT = datetime(2200, 1, 1, tzinfo=UTC)
SUFFIXES = (".json", ".jsonl", ".vtt", ".srt")
# Substrings Dagster partition keys cannot hold, plus the characters its CLI and multi-partitions reserve.
_FORBIDDEN_ID_PARTS = ("...", ",", "|", "[", "]")
# Control characters, and lone surrogates: a JSON "\ud800" escape decodes to one, which no UTF-8 text (Postgres,
# the content hash) can hold.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
MAX_LISTED_TURNS = 20  # turn numbers named in a "skipped" warning; the count is always complete
# Annotation markers transcribers write in place of (or around) speech: {vocalsound}, {disfmarker}, [Laughter.],
# <noise>, (inaudible), music notes. Parentheses count only around a single word: "(I think so)" is often a
# transcriber's uncertain hearing of real speech, and dropping speech is worse than embedding a stray marker.
_MARKERS = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>|\(\s*[^\s()]*\s*\)|[♩♪♫♬]")


def strip_markers(text: str) -> str:
    """The words of a turn without its annotation markers: what is worth embedding. Markers carry no meaning a
    question can match and cost tokens of the model's short window (on the development set, stripping them
    from chunk text raised recall@5 from 0.78 to 0.85; README "Search"). The stored turn keeps them."""
    return _MARKERS.sub(" ", text)


def is_non_speech(text: str) -> bool:
    """True when a turn carries no speech: once annotation markers (``{gap}``, ``[Laughter.]``, ``<noise>``,
    ``(inaudible)``, ``♪``) are removed, no letter or digit is left. Empty and whitespace-only text is
    non-speech; ``"[laughs] Yes."`` and ``"Mm-hmm."`` are speech."""
    return not any(ch.isalnum() for ch in _MARKERS.sub(" ", text))


@dataclass(frozen=True)
class Segment:
    speaker: str
    text: str
    start_s: float | None = None
    end_s: float | None = None
    seq: int | None = None  # 0-based position in the source; None: its position in the Transcript built from it


@dataclass(frozen=True)
class Transcript:
    recording_id: str
    segments: tuple[Segment, ...]
    title: str | None = None
    started_at: datetime | None = None
    source: str = ""

    def __post_init__(self) -> None:
        seqs = [i if s.seq is None else s.seq for i, s in enumerate(self.segments)]
        if (seqs and seqs[0] < 0) or any(b <= a for a, b in pairwise(seqs)):
            raise ValueError(f"recording {self.recording_id!r}: segment seqs must increase from 0 or more, got {seqs}")
        segments = tuple(s if s.seq == q else replace(s, seq=q) for s, q in zip(self.segments, seqs, strict=True))
        object.__setattr__(self, "segments", segments)

    @property
    def content_hash(self) -> str:
        """Hash of what the embeddings and citations depend on: the segments (speaker, text, times, seq), in
        order. The seq is hashed only where it differs from the list position (a turn before it was
        skipped): a changed skip pattern is a change, and recordings without skips keep the hash they had
        before segments carried their seq (so upgrading re-chunks nothing)."""
        h = hashlib.sha256()
        for i, s in enumerate(self.segments):
            fields: list[object] = [s.speaker, s.text, s.start_s, s.end_s]
            if s.seq != i:
                fields.append(s.seq)
            h.update(json.dumps(fields, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


@dataclass(frozen=True)
class InputProblem:
    where: str
    message: str
    fatal: bool = True  # False: a warning, the record still loads

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Parsed:
    transcripts: list[Transcript] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)


def invisible_character(value: str) -> str | None:
    """The first character of ``value`` a reader cannot see or that reorders what they see (control, format
    such as zero-width and bidi overrides, unassigned, private use, line separators, any space but U+0020),
    named with its code point and position; None when there is none."""
    for pos, ch in enumerate(value, 1):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (category == "Zs" and ch != " "):
            name = unicodedata.name(ch, "unnamed character")
            return f"U+{ord(ch):04X} {name} at position {pos}"
    return None


def validate_recording_id(value: Any) -> str | None:
    """None when `value` is a usable recording id (and Dagster partition key), else what is wrong. An id a
    reader cannot tell from another (an invisible, control or bidi character) is refused, naming the
    character and its position."""
    if not isinstance(value, str):
        return f"recording_id must be a string, got {type(value).__name__}"
    if not value.strip():
        return "recording_id is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"recording_id is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
    if value != value.strip():
        return "recording_id has leading or trailing whitespace; remove it"
    if (bad := invisible_character(value)) is not None:
        return (
            f"recording_id contains control characters or invisible ones ({bad}), which let two ids look alike; "
            "use printable characters only"
        )
    for part in _FORBIDDEN_ID_PARTS:
        if part in value:
            return f"recording_id contains {part!r}, which Dagster partition keys cannot hold; rename it"
    return None


def normalize_recording_id(value: Any) -> Any:
    """An imported id in NFC, so the composed and decomposed spellings of one id are one recording."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def parse_started_at(value: Any) -> datetime:
    """An ISO 8601 time a recording can carry, or ValueError naming the problem and the fix. A time without an
    offset is read as UTC."""
    shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:60]}..."
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f'"started_at" {shown} is not an ISO 8601 time; use e.g. "2026-01-09T16:00:00Z"') from None
    try:
        utc = at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_STARTED_AT <= utc < MAX_STARTED_AT:
        raise ValueError(
            f'"started_at" {shown} is outside {MIN_STARTED_AT.year}-{MAX_STARTED_AT.year - 1} (UTC); '
            "give the call's real start time, or leave started_at out"
        )
    return at


def clean_text(text: str) -> tuple[str, int]:
    """Strip control characters (NUL included) except tab/newline, and lone surrogates; normalise to NFC. Returns
    (text, removed)."""
    cleaned, removed = _CONTROL.subn("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return unicodedata.normalize("NFC", cleaned), removed


MAX_SECONDS = 7 * 24 * 3600.0  # a week: longer than any call; a bigger offset is a unit mistake (ms, epoch)


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    try:
        number = float(value) if ok else None
    except OverflowError:  # a 400-digit integer
        number = None
    if number is None or number != number or not 0 <= number <= MAX_SECONDS:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise ValueError(f"{name} must be a non-negative number of seconds (at most {MAX_SECONDS:,.0f}), got {shown}")
    return number


def transcript_from_obj(obj: Any, where: str) -> tuple[Transcript | None, list[InputProblem]]:
    """Validate one JSON object of the import format."""
    if not isinstance(obj, dict):
        return None, [InputProblem(where, f"expected a JSON object, got {type(obj).__name__}")]
    if "recording_id" not in obj:
        return None, [InputProblem(where, 'missing "recording_id"; add it (a string, unique per call)')]
    rid = normalize_recording_id(obj["recording_id"])
    if (err := validate_recording_id(rid)) is not None:
        return None, [InputProblem(where, err)]
    where = f"{where} ({rid})"
    if "segments" not in obj:
        return None, [InputProblem(where, 'missing "segments"; add a list of {"speaker", "text"} objects')]
    raw_segments = obj["segments"]
    if not isinstance(raw_segments, list):
        return None, [InputProblem(where, f'"segments" must be a list, got {type(raw_segments).__name__}')]
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        return None, [InputProblem(where, f'"title" must be a string, got {type(title).__name__}')]
    title_problems: list[InputProblem] = []
    if title is not None:
        if len(title) > MAX_TITLE_CHARS:
            return None, [
                InputProblem(where, f'"title" is {len(title):,} characters; the limit is {MAX_TITLE_CHARS:,}')
            ]
        title, removed = clean_text(title)
        if removed:
            title_problems.append(InputProblem(where, f"stripped {removed} control character(s) from the title", False))
    started_at = None
    if obj.get("started_at") is not None:
        try:
            started_at = parse_started_at(obj["started_at"])
        except ValueError as e:
            return None, [InputProblem(where, str(e))]
    if not raw_segments:
        return None, [InputProblem(where, "empty transcript: no segments; nothing to embed")]
    segments: list[Segment] = []
    skipped: list[int] = []
    problems: list[InputProblem] = title_problems
    for i, seg in enumerate(raw_segments):
        try:
            segment = _segment_from_obj(seg, i, f"{where} segment {i}", problems)
        except ValueError as e:
            return None, [*problems, InputProblem(f"{where} segment {i}", str(e))]
        if segment is None:
            skipped.append(i)
        else:
            segments.append(segment)
    if not segments:
        return None, [*problems, InputProblem(where, _no_speech(rid, len(raw_segments)))]
    if skipped:
        problems.append(_skipped_warning(where, skipped))
    return Transcript(rid, tuple(segments), title, started_at, where), problems


def _no_speech(rid: str, turns: int) -> str:
    return f"recording {rid!r} has no speech to embed: all {turns} turn(s) are empty or non-speech"


def _skipped_warning(where: str, skipped: list[int]) -> InputProblem:
    """The one warning of a recording with skipped turns: how many, and (up to MAX_LISTED_TURNS) which."""
    listed = ", ".join(str(i) for i in skipped[:MAX_LISTED_TURNS])
    if len(skipped) > MAX_LISTED_TURNS:
        listed += f", ... ({len(skipped) - MAX_LISTED_TURNS} more)"
    return InputProblem(where, f"skipped {len(skipped)} turn(s) with no speech: {listed}", fatal=False)


def _segment_from_obj(seg: Any, seq: int, where: str, problems: list[InputProblem]) -> Segment | None:
    if not isinstance(seg, dict):
        raise ValueError(f"expected an object with speaker and text, got {type(seg).__name__}")
    text = seg.get("text")
    if text is None:
        raise ValueError('missing "text"')
    if not isinstance(text, str):
        raise ValueError(f'"text" must be a string, got {type(text).__name__}')
    speaker = seg.get("speaker")
    if speaker is None:
        speaker = "unknown"
    if not isinstance(speaker, str):
        raise ValueError(f'"speaker" must be a string, got {type(speaker).__name__}')
    return make_segment(seq, speaker, text, seg.get("start_s"), seg.get("end_s"), where, problems)


def make_segment(
    seq: int, speaker: str, text: str, start: Any, end: Any, where: str, problems: list[InputProblem]
) -> Segment | None:
    """The turn at source position `seq`, or None when it has no speech (the caller skips and reports it;
    a skipped turn's times and stray characters are not checked: nothing of it is stored)."""
    if len(text) > MAX_SEGMENT_CHARS:
        raise ValueError(
            f"segment text is {len(text):,} characters; the limit is {MAX_SEGMENT_CHARS:,}. "
            "Split the turn into several segments"
        )
    text, removed = clean_text(text)
    if is_non_speech(text):
        return None
    speaker, removed_sp = clean_text(speaker)
    if len(speaker) > MAX_SPEAKER_CHARS:
        raise ValueError(
            f"speaker name is {len(speaker):,} characters; the limit is {MAX_SPEAKER_CHARS} (a name starts every "
            "line of a chunk, and a longer one would crowd the turn's words out of the model's window); shorten it"
        )
    if removed or removed_sp:
        problems.append(InputProblem(where, f"stripped {removed + removed_sp} control character(s)", False))
    start_s, end_s = _number(start, "start_s"), _number(end, "end_s")
    if start_s is not None and end_s is not None and end_s < start_s:
        raise ValueError(f"end_s {end_s} is before start_s {start_s}")
    return Segment(speaker.strip() or "unknown", text.strip(), start_s, end_s, seq)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None


def load_json(text: str, where: str) -> tuple[Any, InputProblem | None]:
    """One JSON document, or the problem with it (never an exception: a bad record costs only itself)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, InputProblem(f"{where}:{e.lineno}", f"malformed JSON: {e.msg} (column {e.colno})")
    except RecursionError:  # nesting deeper than the parser's recursion limit
        return None, InputProblem(where, "JSON nested too deeply to read; not a transcript (the format nests 3 deep)")
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        return None, InputProblem(where, f"unreadable JSON: {str(e).splitlines()[0][:120]}")


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSON Lines text, split on newlines only: JSON strings may hold U+2028, U+0085 and
    other characters that str.splitlines() would split on."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        yield lineno, line.removesuffix("\r")


def parse_json(path: Path, text: str) -> Parsed:
    out = Parsed()
    obj, problem = load_json(text, str(path))
    if problem is not None:
        out.problems.append(problem)
        return out
    _add(out, *transcript_from_obj(obj, str(path)))
    return out


def parse_jsonl(path: Path, text: str) -> Parsed:
    out = Parsed()
    for lineno, line in json_lines(text):
        if not line.strip():
            continue
        obj, problem = load_json(line, f"{path}:{lineno}")
        if problem is not None:
            out.problems.append(InputProblem(f"{path}:{lineno}", problem.message))
            continue
        _add(out, *transcript_from_obj(obj, f"{path}:{lineno}"))
    return out


def _add(out: Parsed, transcript: Transcript | None, problems: list[InputProblem]) -> None:
    out.problems.extend(problems)
    if transcript is not None:
        out.transcripts.append(transcript)


_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_VOICE = re.compile(r"^<v(?:\.[^ >]*)?\s+([^>]+)>(.*?)(?:</v>)?$", re.S)
_SPEAKER_PREFIX = re.compile(r"^([A-Z][\w .'-]{0,40}):\s+(.+)$", re.S)
_TAG = re.compile(r"</?[^>]+>")


def _seconds(stamp: str) -> float:
    m = _TIME.fullmatch(stamp.strip())
    if not m:
        raise ValueError(f"bad timestamp {stamp.strip()!r}")
    h, mi, s, ms = m.groups()
    return int(h or 0) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def _cues(path: Path, text: str, vtt: bool) -> Parsed:
    rid = normalize_recording_id(path.stem)
    if (err := validate_recording_id(rid)) is not None:
        return Parsed(problems=[InputProblem(str(path), f"file name gives the recording id: {err}")])
    return parse_cues(str(path), rid, text, vtt)


def parse_cues(path: str, rid: str, text: str, vtt: bool) -> Parsed:
    """WebVTT and SRT: blocks separated by blank lines, a `start --> end` line, then the cue text.
    The speaker comes from a WebVTT voice tag (<v Dana>) or a `Name: ` prefix; else "unknown".
    A cue's seq is its 0-based position among the file's cues, counting the skipped ones. ``path`` names
    the text in problems (a file, or a source row)."""
    out = Parsed()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if vtt and not (lines and lines[0].startswith("WEBVTT")):
        out.problems.append(InputProblem(f"{path}:1", 'not a WebVTT file: the first line must be "WEBVTT"'))
        return out
    segments: list[Segment] = []
    skipped: list[int] = []
    problems: list[InputProblem] = []
    i, seq = 0, -1
    while i < len(lines):
        if "-->" not in lines[i]:
            i += 1
            continue
        lineno, seq = i + 1, seq + 1
        start_raw, _, rest = lines[i].partition("-->")
        try:
            start_s, end_s = _seconds(start_raw), _seconds(rest.strip().split(" ")[0])
        except ValueError as e:
            out.problems.append(InputProblem(f"{path}:{lineno}", f"{e}; expected HH:MM:SS.mmm"))
            return out
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip():
            body.append(lines[i])
            i += 1
        cue = "\n".join(body).strip()
        speaker = "unknown"
        if m := _VOICE.match(cue):
            speaker, cue = m.group(1).strip(), m.group(2)
        cue = _TAG.sub("", cue).strip()
        if speaker == "unknown" and (m := _SPEAKER_PREFIX.match(cue)):
            speaker, cue = m.group(1).strip(), m.group(2).strip()
        try:
            segment = make_segment(seq, speaker, cue, start_s, end_s, f"{path}:{lineno}", problems)
        except ValueError as e:
            out.problems.extend(problems)
            out.problems.append(InputProblem(f"{path}:{lineno}", str(e)))
            return out
        if segment is None:
            skipped.append(seq)
        else:
            segments.append(segment)
    out.problems.extend(problems)
    if seq < 0:
        out.problems.append(InputProblem(str(path), "empty transcript: no cues; nothing to embed"))
        return out
    if not segments:
        out.problems.append(InputProblem(str(path), _no_speech(rid, seq + 1)))
        return out
    if skipped:
        out.problems.append(_skipped_warning(str(path), skipped))
    out.transcripts.append(Transcript(rid, tuple(segments), None, None, str(path)))
    return out


def read_file(path: Path) -> bytes:
    """The bytes of an importable file, or ValueError saying why not. Checked before a byte is read: the suffix,
    that it is a regular file (a FIFO or device would block or never end) and its size."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown format {suffix or '(no suffix)'}; use one of {', '.join(SUFFIXES)}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block at open() without O_NONBLOCK
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file (a pipe, device or socket); give a file")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(
                f"{info.st_size:,} bytes; the limit is {MAX_FILE_BYTES:,} per file: split it into several .jsonl files"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def parse_file(path: Path) -> Parsed:
    """Parse one file by its suffix; problems never raise."""
    try:
        data = read_file(path)
    except ValueError as e:
        return Parsed(problems=[InputProblem(str(path), str(e))])
    try:
        text = _decode(path, data)
    except ValueError as e:
        return Parsed(problems=[InputProblem(str(path), str(e))])
    suffix = path.suffix.lower()
    if suffix == ".json":
        return parse_json(path, text)
    if suffix == ".jsonl":
        return parse_jsonl(path, text)
    if suffix in (".vtt", ".srt"):
        return _cues(path, text, vtt=suffix == ".vtt")
    return Parsed(problems=[InputProblem(str(path), f"unknown format; use one of {', '.join(SUFFIXES)}")])


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and the importable files under named directories (sorted, recursive)."""
    for p in paths:
        if p.is_dir():
            # A folder's importable files: regular files only (a FIFO in a folder is not waited on).
            yield from sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
        else:
            yield p


def reject_duplicates(transcripts: list[Transcript]) -> tuple[list[Transcript], list[InputProblem]]:
    """A recording id that appears twice in one batch is ambiguous: reject every copy, name every place."""
    seen: dict[str, list[Transcript]] = {}
    for t in transcripts:
        seen.setdefault(t.recording_id, []).append(t)
    keep = [t for t in transcripts if len(seen[t.recording_id]) == 1]
    problems = [
        InputProblem(
            t.source,
            f"recording_id {t.recording_id!r} appears {len(group)} times in this batch "
            f"({', '.join(x.source for x in group)}); load one version",
        )
        for group in seen.values()
        if len(group) > 1
        for t in group
    ]
    return keep, problems
