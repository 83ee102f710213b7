"""Search from Python: every mode goes through the SQL function `embed_search` (lib/search/function.py), so
the CLI, the evaluation and an application's RPC rank exactly alike."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import psycopg
from psycopg import sql

from embed_assets.lib.db.connection import register_vector_types
from embed_assets.lib.db.names import q
from embed_assets.lib.errors import ConfigError, InputError

Mode = Literal["hybrid", "vector", "text"]
MODES: tuple[str, ...] = ("hybrid", "vector", "text")
DEFAULT_MODE: Mode = "hybrid"  # the best recall on the development set (README "Search")


# A question, not a document: the models read ~256-8,192 tokens, and Postgres' tsvector refuses 1 MB of text.
MAX_QUERY_CHARS = 4_000


def query_problem(text: object) -> str | None:
    """What makes ``text`` unusable as a search query (None when it is fine): the one check every way in shares
    (the CLI's argument, each --batch line, search())."""
    if not isinstance(text, str):
        return f"a query must be a string, got {type(text).__name__}"
    if not text.strip():
        return "the query is empty; give the words to look for"
    if len(text) > MAX_QUERY_CHARS:
        return (
            f"the query is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,} (ask a question, not a document)"
        )
    return _unsendable(text, "the query")


def _unsendable(text: str, what: str) -> str | None:
    """What keeps ``text`` from reaching Postgres (a lone surrogate, a NUL), named with its position."""
    for pos, ch in enumerate(text, 1):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return f"{what} is not valid UTF-8 (an undecodable byte or lone surrogate at position {pos}); re-encode it"
        if ch == "\x00":
            return f"{what} holds a NUL character at position {pos}; remove it"
    return None


def recording_filter_problem(value: object) -> str | None:
    """What makes ``value`` unusable as a search's recording filter (None when it is fine): it is sent to
    Postgres as text, so a NUL or a lone surrogate (an undecodable argv byte) is refused, not raised."""
    if not isinstance(value, str):
        return f"a recording id must be a string, got {type(value).__name__}"
    return _unsendable(value, "the recording id")


@dataclass(frozen=True)
class Hit:
    recording_id: str
    chunk_index: int
    score: float
    first_seq: int
    last_seq: int
    start_s: float | None
    end_s: float | None
    speakers: list[str]
    content: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def search(
    conn: psycopg.Connection,
    query_vector: np.ndarray | None,
    query_text: str | None,
    k: int = 5,
    recording_id: str | None = None,
    mode: Mode = DEFAULT_MODE,
    function: str = "embed_search",
) -> list[Hit]:
    """The k best chunks of the active model for ``mode``: ``vector`` uses only the embedding (score = cosine
    similarity), ``text`` only the words (ts_rank_cd), ``hybrid`` fuses both rankings. ``function``: another
    function of embed_search's body (a shadow model's, during `embed-assets model compare`)."""
    if mode not in MODES:
        raise ConfigError(f"search mode {mode!r} is not known; use one of {', '.join(MODES)}")
    if query_text is not None and (problem := query_problem(query_text)) is not None:
        raise InputError(problem)
    if recording_id is not None:
        if (problem := recording_filter_problem(recording_id)) is not None:
            raise InputError(problem)
        recording_id = unicodedata.normalize("NFC", recording_id)  # ids are stored in NFC (lib/transcripts.py)
    register_vector_types(conn)
    vec = None if mode == "text" or query_vector is None else query_vector.astype(np.float32)
    text = None if mode == "vector" else query_text
    with conn.transaction():  # embed_search's hnsw settings are transaction-local
        rows = conn.execute(
            q(
                conn,
                """SELECT recording_id, chunk_index, score, first_seq, last_seq, start_s, end_s, speakers, content
                   FROM {s}.{fn}(%s::{v}.vector, %s, %s, %s)""",
                fn=sql.Identifier(function),
            ),
            (vec, text, k, recording_id),
        ).fetchall()
    return [Hit(r[0], r[1], float(r[2]), r[3], r[4], r[5], r[6], list(r[7]), r[8]) for r in rows]
