"""`embed-assets model compare`: the active model beside a shadow one on the same queries. Dagster-free.

Queries are the user's labelled questions (then both models' recall@k, by the retrieval evaluation's scoring), or
passages drawn from the active model's chunk text (a deterministic sample). Per query and mode: the overlap of the
two top-k lists (a result of one counts as shared when the other's top-k holds a chunk of the same recording with
overlapping turns, so it holds whether or not the two models share chunk boundaries) and each search's latency.
The shadow model is searched through a function of embed_search's very body, created inside a transaction that is
rolled back: nothing is left behind, and no reader ever sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.models.registry import Registered, index_strategy
from embed_assets.lib.search.evaluate import KS, LabelledQuery, _by_split
from embed_assets.lib.search.function import search_function_ddl
from embed_assets.lib.search.query import Hit, search

CANDIDATE_FUNCTION = "embed_search_compare"
MODES = ("hybrid", "vector")


@dataclass
class Comparison:
    active: str
    candidate: str
    queries: int
    labelled: bool
    k: int
    overlap: dict[str, float] = field(default_factory=dict)  # mode -> mean share of top-k in common
    recall: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)  # model -> mode -> split metrics
    latency_ms: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # model -> mode -> p50/p95

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


def drawn_queries(conn: psycopg.Connection, active: Registered, n: int, words: int = 12) -> list[LabelledQuery]:
    """``n`` queries made of the first ``words`` words of chunks of the active model, chosen by hash (the same
    sample every time for the same store). Searched over every recording, as an application would."""
    rows = conn.execute(
        q(
            conn,
            """SELECT recording_id, content, first_seq, last_seq FROM {s}.chunks WHERE model = %s
               ORDER BY md5(content_hash || recording_id || chunk_index) LIMIT %s""",
        ),
        (active.model_id, n),
    ).fetchall()
    out = []
    for _rid, content, first, last in rows:
        text = " ".join(content.replace("\n", " ").split()[:words])
        out.append(LabelledQuery("", text, [(first, last)]))
    return out


def _shared(a: Sequence[Hit], b: Sequence[Hit]) -> float:
    if not a:
        return 1.0 if not b else 0.0
    found = sum(
        any(x.recording_id == y.recording_id and x.first_seq <= y.last_seq and y.first_seq <= x.last_seq for y in b)
        for x in a
    )
    return found / len(a)


def compare(
    conn: psycopg.Connection,
    active: Registered,
    candidate: Registered,
    queries: list[LabelledQuery],
    embed_active: Callable[[list[str]], np.ndarray],
    embed_candidate: Callable[[list[str]], np.ndarray],
    *,
    labelled: bool,
    k: int = 10,
    progress: Callable[[str], None] = lambda _: None,
) -> Comparison:
    report = Comparison(active.model_id, candidate.model_id, len(queries), labelled, k)
    texts = [lq.query for lq in queries]
    vectors = {active.model_id: embed_active(texts), candidate.model_id: embed_candidate(texts)}
    progress(f"embedded {len(texts)} queries with both models")
    functions = {active.model_id: "embed_search", candidate.model_id: CANDIDATE_FUNCTION}
    with conn.transaction() as tx:
        conn.execute(search_function_ddl(conn, candidate, index_strategy(conn, candidate), name=CANDIDATE_FUNCTION))
        for mode in MODES:
            hits: dict[str, list[list[Hit]]] = {}
            for model_id, fn in functions.items():
                times, ranked = [], []
                for lq, vec in zip(queries, vectors[model_id], strict=True):
                    started = time.perf_counter()
                    ranked.append(
                        search(conn, vec, lq.query, max(k, *KS), lq.recording_id or None, mode, function=fn)  # type: ignore[arg-type]
                    )
                    times.append((time.perf_counter() - started) * 1000)
                hits[model_id] = ranked
                report.latency_ms.setdefault(model_id, {})[mode] = {
                    "p50": round(float(np.percentile(times, 50)), 2),
                    "p95": round(float(np.percentile(times, 95)), 2),
                }
                if labelled:
                    spans = [[(h.first_seq, h.last_seq) for h in r] for r in ranked]
                    report.recall.setdefault(model_id, {})[mode] = _by_split(spans, queries)
            a, b = hits[active.model_id], hits[candidate.model_id]
            report.overlap[mode] = round(
                float(np.mean([_shared(x[:k], y[:k]) for x, y in zip(a, b, strict=True)])) if queries else 0.0, 4
            )
            progress(f"{mode}: top-{k} overlap {report.overlap[mode]:.3f}")
        raise psycopg.Rollback(tx)  # the candidate's function was only ever for this comparison
    return report
