"""Pipeline health from the database: what `embed-assets status` and the completion check report.
Every number here is one a user can reproduce with the SQL in this file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.vector_cache import billed_since


@dataclass(frozen=True)
class Thresholds:
    healthy_completion: float = 0.99
    dead_letter_warn: int = 20  # more than this: warning
    dead_letter_critical: int = 50  # more than this: critical
    idle_warn_s: float = 3600  # no embedding for this long while work is pending: warning
    idle_critical_s: float = 6 * 3600


@dataclass
class DbStatus:
    model: str
    recordings: int
    embedded_current: int  # embedded, and the transcript has not changed since
    stale: int  # embedded, but the transcript changed since
    never_embedded: int
    chunks: int
    vectors: int
    vectors_last_hour: int  # inputs the provider embedded (billed) in the last hour: not copies, cache hits, adoptions
    last_embedded_at: datetime | None
    seconds_since_last_embedding: float | None
    stale_ids: list[str] = field(default_factory=list)
    unreadable_source_rows: int = 0  # current transcripts whose source row cannot be read (recording_errors)

    @property
    def pending(self) -> int:
        return self.stale + self.never_embedded

    @property
    def completion_rate(self) -> float:
        return self.embedded_current / self.recordings if self.recordings else 1.0

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["last_embedded_at"] = self.last_embedded_at.isoformat() if self.last_embedded_at else None
        d["completion_rate"] = round(self.completion_rate, 6)
        d["pending"] = self.pending
        return d


def db_status(conn: psycopg.Connection, model: str, sample_ids: int = 20) -> DbStatus:
    row = conn.execute(
        q(
            conn,
            """SELECT count(*),
                  count(*) FILTER (WHERE e.source_hash = r.content_hash),
                  count(*) FILTER (WHERE e.source_hash IS DISTINCT FROM r.content_hash AND e.recording_id IS NOT NULL),
                  count(*) FILTER (WHERE e.recording_id IS NULL)
           FROM {s}.recordings r
           LEFT JOIN {s}.embedded_recordings e ON e.recording_id = r.recording_id AND e.model = %s""",
        ),
        (model,),
    ).fetchone()
    chunks = conn.execute(q(conn, "SELECT count(*) FROM {s}.chunks WHERE model = %s"), (model,)).fetchone()[0]
    vec = conn.execute(
        q(
            conn,
            """SELECT count(*), max(embedded_at), extract(epoch FROM now() - max(embedded_at))
           FROM {s}.chunk_vectors WHERE model = %s""",
        ),
        (model,),
    ).fetchone()
    last_hour = billed_since(conn, model, 1).inputs
    stale_ids = [
        r[0]
        for r in conn.execute(
            q(
                conn,
                """SELECT r.recording_id FROM {s}.recordings r
               JOIN {s}.embedded_recordings e ON e.recording_id = r.recording_id AND e.model = %s
               WHERE e.source_hash <> r.content_hash ORDER BY r.updated_at DESC LIMIT %s""",
            ),
            (model, sample_ids),
        )
    ]
    unreadable = conn.execute(
        q(
            conn,
            """SELECT count(*) FROM {s}.recording_errors x JOIN {s}.recordings r USING (recording_id)
               WHERE x.model = %s AND x.unreadable AND x.source_hash = r.content_hash""",
        ),
        (model,),
    ).fetchone()[0]
    return DbStatus(
        model,
        row[0],
        row[1],
        row[2],
        row[3],
        chunks,
        vec[0],
        last_hour,
        vec[1],
        float(vec[2]) if vec[2] is not None else None,
        stale_ids,
        unreadable,
    )


@dataclass(frozen=True)
class Trend:
    """The numbers the scheduled health evaluation records; each is the SQL below, reproducible by a user. Work and
    spend are what the provider billed (provider_usage, one row per answered call, failed writes included): a
    vector copied, reused from the cache or adopted cost nothing and is not counted (lib/vector_cache.py)."""

    oldest_pending_minutes: float | None  # the longest a current transcript has waited for its vectors
    vectors_last_hour: int  # inputs the provider embedded in the last hour
    tokens_last_hour: int  # tokens the provider billed in the last hour
    tokens_last_24h: int


def trend(conn: psycopg.Connection, model: str) -> Trend:
    pending = conn.execute(
        q(
            conn,
            """SELECT extract(epoch FROM now() - min(r.updated_at)) / 60
               FROM {s}.recordings r
               LEFT JOIN {s}.embedded_recordings e ON e.recording_id = r.recording_id AND e.model = %s
               WHERE e.source_hash IS DISTINCT FROM r.content_hash""",
        ),
        (model,),
    ).fetchone()[0]
    hour, day = billed_since(conn, model, 1), billed_since(conn, model, 24)
    return Trend(float(pending) if pending is not None else None, hour.inputs, hour.tokens, day.tokens)


def verdict(s: DbStatus, failed: int, dead_lettered: int, t: Thresholds = Thresholds()) -> tuple[str, list[str]]:
    """("healthy" | "warning" | "critical", reasons) by DESIGN.md's thresholds."""
    reasons: list[tuple[str, str]] = []
    if s.completion_rate < t.healthy_completion:
        reasons.append(("warning", f"completion {s.completion_rate:.1%} < {t.healthy_completion:.0%}"))
    if dead_lettered > t.dead_letter_critical:
        reasons.append(("critical", f"{dead_lettered} dead-lettered recordings > {t.dead_letter_critical}"))
    elif dead_lettered > t.dead_letter_warn:
        reasons.append(("warning", f"{dead_lettered} dead-lettered recordings > {t.dead_letter_warn}"))
    if s.pending or failed:
        idle = s.seconds_since_last_embedding
        if idle is None or idle > t.idle_critical_s:
            what = "never" if idle is None else f"not for {idle / 3600:.1f} h"
            reasons.append(("critical", f"work is pending but nothing was embedded ({what})"))
        elif idle > t.idle_warn_s:
            reasons.append(("warning", f"work is pending but nothing was embedded for {idle / 60:.0f} min"))
    level = "critical" if any(r[0] == "critical" for r in reasons) else "warning" if reasons else "healthy"
    return level, [r[1] for r in reasons]


def with_configuration(level: str, reasons: list[str], problems: list[str]) -> tuple[str, list[str]]:
    """A configuration problem (the preflight's findings) means no run can work: critical, whatever the numbers."""
    if not problems:
        return level, reasons
    return "critical", [*problems, *reasons]


def last_errors(conn: psycopg.Connection, model: str, ids: list[str]) -> dict[str, dict[str, object]]:
    """The last recorded error of each recording in ``ids`` (for the current transcript or an earlier one)."""
    rows = conn.execute(
        q(
            conn,
            """SELECT x.recording_id, x.asset, x.error, x.failures, x.failed_at, x.run_id,
                  x.source_hash = r.content_hash
           FROM {s}.recording_errors x JOIN {s}.recordings r USING (recording_id)
           WHERE x.model = %s AND x.recording_id = ANY(%s)""",
        ),
        (model, ids),
    ).fetchall()
    return {
        r[0]: {
            "asset": r[1],
            "error": r[2],
            "failures": r[3],
            "failed_at": r[4].isoformat(),
            "run_id": r[5],
            "current_transcript": r[6],
        }
        for r in rows
    }
