"""Batch search: many queries in one process (the embedding model loads once), one JSON line out per query."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import psycopg

from embed_assets.lib.errors import InputError
from embed_assets.lib.search.query import Mode, query_problem, recording_filter_problem, search
from embed_assets.lib.transcripts import json_lines

EMBED_AT_ONCE = 64


@dataclass(frozen=True)
class BatchQuery:
    line: int
    query: str
    recording_id: str | None
    k: int


def read_queries(data: bytes, where: str, default_k: int) -> list[BatchQuery]:
    """A --batch file's bytes as queries: UTF-8, one JSON object per line (split on newlines only: a JSON string
    may hold U+2028 or U+0085)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    return parse_queries((line for _, line in json_lines(text)), where, default_k)


def parse_queries(lines: Iterable[str], where: str, default_k: int) -> list[BatchQuery]:
    """Lines ``{"query": ..., "recording_id": optional, "k": optional}``; a bad line names itself and the fix.
    Every line is checked before any query runs, so a bad one never leaves a batch half answered."""
    out: list[BatchQuery] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            why = f"{e.msg}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else "unreadable"
            raise InputError(f"{where}:{n}: malformed JSON ({why})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or not obj["query"].strip():
            raise InputError(f'{where}:{n}: each line needs {{"query": "..."}} (a non-empty string)')
        if (problem := query_problem(obj["query"])) is not None:
            raise InputError(f"{where}:{n}: {problem}")
        rid, k = obj.get("recording_id"), obj.get("k", default_k)
        if rid is not None and (problem := recording_filter_problem(rid)) is not None:
            raise InputError(f'{where}:{n}: "recording_id": {problem}')
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise InputError(f'{where}:{n}: "k" must be a whole number from 1 to 1000')
        out.append(BatchQuery(n, obj["query"], rid, k))
    return out


def run_batch(
    conn: psycopg.Connection,
    queries: list[BatchQuery],
    embed: Callable[[list[str]], list[np.ndarray]] | None,
    mode: Mode,
) -> Iterator[dict[str, object]]:
    """One result object per query, in input order: the query, and its hits with the citation fields."""
    for lo in range(0, len(queries), EMBED_AT_ONCE):
        part = queries[lo : lo + EMBED_AT_ONCE]
        vectors = embed([b.query for b in part]) if embed is not None and mode != "text" else [None] * len(part)
        for b, vec in zip(part, vectors, strict=True):
            hits = search(conn, vec, b.query, b.k, b.recording_id, mode)
            yield {
                "line": b.line,
                "query": b.query,
                "recording_id": b.recording_id,
                "mode": mode,
                "hits": [h.as_dict() for h in hits],
            }
