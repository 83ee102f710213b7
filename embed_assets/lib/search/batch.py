"""Batch search: many queries in one process (the embedding model loads once), one JSON line out per query."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import psycopg

from embed_assets.lib.errors import InputError
from embed_assets.lib.search.query import Mode, search

EMBED_AT_ONCE = 64


@dataclass(frozen=True)
class BatchQuery:
    line: int
    query: str
    recording_id: str | None
    k: int


def parse_queries(lines: Iterable[str], where: str, default_k: int) -> list[BatchQuery]:
    """Lines ``{"query": ..., "recording_id": optional, "k": optional}``; a bad line names itself and the fix."""
    out: list[BatchQuery] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}:{n}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or not obj["query"].strip():
            raise InputError(f'{where}:{n}: each line needs {{"query": "..."}} (a non-empty string)')
        rid, k = obj.get("recording_id"), obj.get("k", default_k)
        if rid is not None and not isinstance(rid, str):
            raise InputError(f'{where}:{n}: "recording_id" must be a string')
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
