"""The source definition file (EMBED_SOURCE): where the user's own tables are, and the SQL that reads them.

```yaml
name: fathom                                  # a label for status and the UI (default: the file's stem)
database_url: ${FATHOM_DATABASE_URL}          # optional: default is the vector store's own database
recordings: |                                 # recording_id, and optionally title, started_at, updated_at
  SELECT id AS recording_id, title, started_at, updated_at FROM public.fathom_calls
transcripts:                                  # one transcript value per recording ...
  query: SELECT call_id AS recording_id, transcript FROM public.fathom_transcripts
  format: json                                # json | text | vtt | srt
  turns: null                                 # json: key of the turn array when the value is an object
  fields: {speaker: speaker, text: text, start_s: start_s, end_s: end_s}   # json: dotted paths allowed
# turns: |                                    # ... or one row per turn instead of `transcripts`
#   SELECT call_id AS recording_id, seq, speaker, start_s, end_s, text FROM public.call_turns
reconcile_seconds: 300                        # content-hash reconcile period (the change detector when
                                              # `recordings` has no updated_at)
```

`${NAME}` in ``database_url`` is replaced by the environment variable NAME when the file is read, so no
secret sits in the file. The SQL is the user's own: it is only ever run inside a SELECT of ours
(``SELECT ... FROM (<query>) src WHERE ...``), with values passed as parameters, on a connection that
only reads. Nothing here touches a database (lib/sources/external.py does).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from embed_assets.lib.errors import ConfigError

Format = Literal["json", "text", "vtt", "srt"]
FORMATS: tuple[str, ...] = ("json", "text", "vtt", "srt")
DEFAULT_RECONCILE_S = 300.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = {"name", "database_url", "recordings", "transcripts", "turns", "reconcile_seconds"}
_TRANSCRIPT_KEYS = {"query", "format", "turns", "fields"}
_FIELD_KEYS = ("speaker", "text", "start_s", "end_s")


@dataclass(frozen=True)
class JsonFields:
    """Where each turn's values are inside a JSON turn object (dotted paths: ``speaker.display_name``)."""

    speaker: str = "speaker"
    text: str = "text"
    start_s: str = "start_s"
    end_s: str = "end_s"


@dataclass(frozen=True)
class SourceDefinition:
    path: Path
    name: str
    database_url: str | None = field(repr=False)  # after ${VAR} substitution: may hold a password
    recordings_sql: str
    transcripts_sql: str | None
    format: Format | None
    turns_key: str | None
    fields: JsonFields
    turns_sql: str | None
    reconcile_s: float

    @property
    def parse_digest(self) -> str:
        """What turns a stored value into turns: part of each recording's content hash, so changing the
        format or the field mapping re-chunks every recording (a changed query that yields the same values
        does not)."""
        shape = {
            "format": self.format,
            "turns": self.turns_key,
            "fields": asdict(self.fields),
            "rows": bool(self.turns_sql),
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def reads(self) -> str:
        """Which query yields the transcript: for messages."""
        return "turns query" if self.turns_sql else "transcripts query"


def _problem(path: Path, message: str) -> ConfigError:
    return ConfigError(f"source file {path} (EMBED_SOURCE): {message}")


def _sql(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _problem(path, f"`{key}` must be a SELECT statement (a string)")
    return value.strip().rstrip(";").strip()


def _substitute(path: Path, value: str) -> str:
    def var(m: re.Match[str]) -> str:
        got = os.environ.get(m.group(1), "")
        if not got.strip():
            raise _problem(path, f"`database_url` uses ${{{m.group(1)}}}, which is not set; set it where runs execute")
        return got.strip()

    return _VAR.sub(var, value)


def load_definition(path: Path) -> SourceDefinition:
    """Read and validate a source file; every problem is one ConfigError naming the key and the fix."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise _problem(path, f"cannot read it ({e.strerror}); fix EMBED_SOURCE or create the file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _problem(path, f"not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise _problem(path, "expected a mapping with `recordings` and `transcripts` or `turns`")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _problem(path, f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(_KEYS))}")
    url = raw.get("database_url")
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise _problem(path, "`database_url` must be a URL string, e.g. ${APP_DATABASE_URL}")
    if "transcripts" in raw and "turns" in raw:
        raise _problem(path, "set either `transcripts` (one value per recording) or `turns` (a row per turn), not both")
    if "transcripts" not in raw and "turns" not in raw:
        raise _problem(path, "missing `transcripts` (one value per recording) or `turns` (a row per turn)")
    transcripts_sql = fmt = turns_key = None
    fields = JsonFields()
    if "transcripts" in raw:
        t = raw["transcripts"]
        if isinstance(t, str):
            t = {"query": t}
        if not isinstance(t, dict):
            raise _problem(path, "`transcripts` must be a mapping with `query` and `format`")
        if unknown := sorted(set(t) - _TRANSCRIPT_KEYS):
            raise _problem(path, f"unknown key(s) transcripts.{', transcripts.'.join(unknown)}")
        transcripts_sql = _sql(path, "transcripts.query", t.get("query"))
        fmt = t.get("format", "json")
        if fmt not in FORMATS:
            raise _problem(path, f"`transcripts.format` is {fmt!r}; use one of {', '.join(FORMATS)}")
        turns_key = t.get("turns")
        if turns_key is not None and not isinstance(turns_key, str):
            raise _problem(path, "`transcripts.turns` must be a key name (dotted paths allowed)")
        given = t.get("fields") or {}
        if not isinstance(given, dict) or any(not isinstance(v, str) or not v for v in given.values()):
            raise _problem(path, "`transcripts.fields` must map speaker/text/start_s/end_s to key names")
        if unknown := sorted(set(given) - set(_FIELD_KEYS)):
            allowed = ", ".join(_FIELD_KEYS)
            raise _problem(path, f"unknown transcripts.fields key(s) {', '.join(unknown)}; use {allowed}")
        if (given or turns_key) and fmt != "json":
            raise _problem(path, "`transcripts.fields` and `transcripts.turns` apply to format json only")
        fields = JsonFields(**given)
    reconcile = raw.get("reconcile_seconds", DEFAULT_RECONCILE_S)
    if isinstance(reconcile, bool) or not isinstance(reconcile, int | float) or reconcile <= 0:
        raise _problem(path, f"`reconcile_seconds` must be a positive number, got {reconcile!r}")
    name = raw.get("name") or path.stem
    return SourceDefinition(
        path=path,
        name=str(name),
        database_url=_substitute(path, url.strip()) if url else None,
        recordings_sql=_sql(path, "recordings", raw.get("recordings")),
        transcripts_sql=transcripts_sql,
        format=fmt,
        turns_key=turns_key,
        fields=fields,
        turns_sql=_sql(path, "turns", raw["turns"]) if "turns" in raw else None,
        reconcile_s=float(reconcile),
    )


def configured_definition() -> SourceDefinition | None:
    """The definition named by EMBED_SOURCE, or None: the project's own tables are the source."""
    value = os.environ.get("EMBED_SOURCE", "").strip()
    if not value:
        return None
    return load_definition(Path(value).expanduser().resolve())
