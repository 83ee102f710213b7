"""Retrieval evaluation on labelled questions: recall@1/3/5/10 and MRR of every search mode, beside a plain
reference recipe and the random baseline, with search latency. Dagster-free; `embed-assets eval` runs it.

Labelled questions are JSON lines ``{"recording_id", "query", "spans": [[first, last], ...]}``: the turn
numbers (source positions, ``seq``) that answer the question. A question is searched within its recording;
a result is a hit when its chunk's ``[first_seq, last_seq]`` overlaps a span.
- reference recipe: what a user writes in an afternoon with the same model: 1,000-character windows of
  ``Speaker: text`` lines with 200 characters of overlap, cosine top-k (the model truncates long windows, as
  it does for them);
- random: k chunks of the product's own chunking drawn at random, as an exact expectation.
The split: a recording is in the *tune* half when sha256(recording_id) is even, else *held-out*. Settings
are chosen on the tune half only; the held-out figures are the ones that say how unseen meetings fare.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.errors import InputError
from embed_assets.lib.search.query import MODES, search
from embed_assets.lib.sources.tables import read_recording

KS = (1, 3, 5, 10)
WINDOW_CHARS, WINDOW_OVERLAP = 1000, 200


@dataclass(frozen=True)
class LabelledQuery:
    recording_id: str
    query: str
    spans: tuple[tuple[int, int], ...]


def load_queries(path: Path) -> list[LabelledQuery]:
    out: list[LabelledQuery] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            spans = tuple((int(a), int(b)) for a, b in obj["spans"])
            out.append(LabelledQuery(str(obj["recording_id"]), str(obj["query"]), spans))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(
                f'{path}:{n}: expected {{"recording_id", "query", "spans": [[first, last], ...]}} ({e})'
            ) from None
    return out


def split_of(recording_id: str) -> str:
    return "tune" if int(hashlib.sha256(recording_id.encode()).hexdigest(), 16) % 2 == 0 else "held-out"


def is_hit(first: int, last: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(first <= b and a <= last for a, b in spans)


@dataclass
class Metrics:
    queries: int = 0
    recall: dict[int, float] = field(default_factory=dict)
    mrr: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "queries": self.queries,
            **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            "mrr": round(self.mrr, 4),
        }


def score(ranked: Sequence[Sequence[tuple[int, int]]], queries: Sequence[LabelledQuery]) -> Metrics:
    """Metrics of ranked (first_seq, last_seq) lists, one per query, best first."""
    n = len(queries)
    hits_at = {k: 0 for k in KS}
    rr = 0.0
    for ranks, lq in zip(ranked, queries, strict=True):
        first_hit = next((i for i, (a, b) in enumerate(ranks[: max(KS)]) if is_hit(a, b, lq.spans)), None)
        if first_hit is not None:
            rr += 1 / (first_hit + 1)
            for k in KS:
                hits_at[k] += first_hit < k
    return Metrics(n, {k: hits_at[k] / n if n else 0.0 for k in KS}, rr / n if n else 0.0)


def random_baseline(chunks: dict[str, list[tuple[int, int]]], queries: Sequence[LabelledQuery]) -> Metrics:
    """Expected metrics of k chunks drawn at random (without replacement) from the recording's chunks."""
    n = len(queries)
    recall = {k: 0.0 for k in KS}
    mrr = 0.0
    for lq in queries:
        spans = chunks.get(lq.recording_id, [])
        total, good = len(spans), sum(is_hit(a, b, lq.spans) for a, b in spans)
        for k in KS:
            kk = min(k, total)
            recall[k] += 1 - (math.comb(total - good, kk) / math.comb(total, kk) if total else 1)
        # P(first hit at rank r) / r, ranks up to 10: every earlier draw missed, so all `good` chunks remain.
        p_none_before = 1.0
        for r in range(1, min(max(KS), total) + 1):
            p_hit = good / (total - (r - 1))
            mrr += p_none_before * p_hit / r
            p_none_before *= 1 - p_hit
    return Metrics(n, {k: v / n if n else 0.0 for k, v in recall.items()}, mrr / n if n else 0.0)


def reference_windows(segments: Sequence[tuple[int, str, str]]) -> list[tuple[str, int, int]]:
    """1,000-character windows (200 overlap) of ``Speaker: text`` lines: (text, first_seq, last_seq)."""
    text, owner = "", []  # owner[i]: the seq of the line character i belongs to
    for seq, speaker, body in segments:
        line = f"{speaker}: {body}\n"
        text += line
        owner += [seq] * len(line)
    out = []
    step = WINDOW_CHARS - WINDOW_OVERLAP
    for lo in range(0, max(1, len(text) - WINDOW_OVERLAP), step):
        hi = min(len(text), lo + WINDOW_CHARS)
        out.append((text[lo:hi], owner[lo], owner[hi - 1]))
    return out


@dataclass
class Report:
    methods: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)  # method -> split -> metrics
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _by_split(ranked: list[list[tuple[int, int]]], queries: list[LabelledQuery]) -> dict[str, dict[str, object]]:
    out = {}
    for name in ("tune", "held-out", "all"):
        idx = [i for i, lq in enumerate(queries) if name == "all" or split_of(lq.recording_id) == name]
        out[name] = score([ranked[i] for i in idx], [queries[i] for i in idx]).as_dict()
    return out


def evaluate(
    conn: psycopg.Connection,
    queries: list[LabelledQuery],
    embed: Callable[[list[str]], np.ndarray],
    log: Callable[[str], None] = lambda _: None,
) -> Report:
    """Every mode of the product's search (through embed_search) and both baselines, on ``queries`` over the
    recordings already embedded in ``conn``'s store."""
    report = Report()
    rids = sorted({lq.recording_id for lq in queries})
    missing = [r for r in rids if read_recording(conn, r) is None]
    if missing:
        raise InputError(f"{len(missing)} labelled recording(s) are not in the store, e.g. {missing[:3]}; load them")
    qvecs = embed([lq.query for lq in queries])
    for mode in MODES:
        ranked, times = [], []
        for lq, vec in zip(queries, qvecs, strict=True):
            started = time.perf_counter()
            hits = search(conn, vec, lq.query, max(KS), lq.recording_id, mode)  # type: ignore[arg-type]
            times.append((time.perf_counter() - started) * 1000)
            ranked.append([(h.first_seq, h.last_seq) for h in hits])
        report.methods[f"product {mode}"] = _by_split(ranked, queries)
        report.latency_ms[mode] = {
            "p50": round(float(np.percentile(times, 50)), 2),
            "p95": round(float(np.percentile(times, 95)), 2),
        }
        log(f"{mode}: recall@5 {report.methods[f'product {mode}']['all']['recall@5']}")
    chunks: dict[str, list[tuple[int, int]]] = {}
    for rid, first, last in conn.execute(
        q(
            conn,
            "SELECT c.recording_id, c.first_seq, c.last_seq FROM {s}.chunks c "
            "JOIN {s}.active_model a ON a.model = c.model WHERE c.recording_id = ANY(%s) ORDER BY 1, c.chunk_index",
        ),
        (rids,),
    ):
        chunks.setdefault(rid, []).append((first, last))
    random = {}
    for name in ("tune", "held-out", "all"):
        sub = [lq for lq in queries if name == "all" or split_of(lq.recording_id) == name]
        random[name] = random_baseline(chunks, sub).as_dict()
    report.methods["random chunks"] = random
    # The reference recipe, embedded with the same model, cosine within the recording.
    ranked = []
    windows: dict[str, tuple[list[tuple[str, int, int]], np.ndarray]] = {}
    for rid in rids:
        src = read_recording(conn, rid)
        assert src is not None
        w = reference_windows([(s.seq, s.speaker, s.text) for s in src.segments])
        windows[rid] = (w, _normalise(embed([t for t, _, _ in w])))
    for lq, vec in zip(queries, _normalise(qvecs), strict=True):
        w, m = windows[lq.recording_id]
        order = np.argsort(-(m @ vec))[: max(KS)]
        ranked.append([(w[i][1], w[i][2]) for i in order])
    report.methods["reference recipe"] = _by_split(ranked, queries)
    report.facts.update(
        recordings=len(rids),
        queries=len(queries),
        chunks=sum(len(v) for v in chunks.values()),
        reference_windows=sum(len(v[0]) for v in windows.values()),
        tune_queries=sum(split_of(lq.recording_id) == "tune" for lq in queries),
    )
    return report


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
