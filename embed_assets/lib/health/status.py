"""Pipeline health from the database: what `embed-assets status` and the completion check report.
Every number here is one a user can reproduce with the SQL in this file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg

from embed_assets.lib.db.names import q
from embed_assets.lib.health.backlog import Backlog
from embed_assets.lib.sources.removal_guard import HeldRemoval


@dataclass(frozen=True)
class Thresholds:
    healthy_completion: float = 0.99
    dead_letter_warn: int = 20  # more than this: warning
    dead_letter_critical: int = 50  # more than this: critical
    idle_warn_s: float = 3600  # no embedding for this long while work is pending: warning
    idle_critical_s: float = 6 * 3600
    # EMBED_HEALTH_IN_FLIGHT_S: pending work younger than this is in flight, not missing (the completion rule);
    # a stall is the idle rule's to see, within idle_warn_s.
    in_flight_grace_s: float = 6 * 3600


@dataclass
class DbStatus:
    model: str
    recordings: int
    embedded_current: int  # embedded, and the transcript has not changed since
    stale: int  # embedded, but the transcript changed since
    never_embedded: int
    chunks: int
    vectors: int
    vectors_last_hour: int
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
            """SELECT count(*), count(*) FILTER (WHERE embedded_at > now() - interval '1 hour'), max(embedded_at),
                  extract(epoch FROM now() - max(embedded_at))
           FROM {s}.chunk_vectors WHERE model = %s""",
        ),
        (model,),
    ).fetchone()
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
        vec[1],
        vec[2],
        float(vec[3]) if vec[3] is not None else None,
        stale_ids,
        unreadable,
    )


@dataclass(frozen=True)
class Trend:
    """The numbers the scheduled health evaluation records; each is the SQL below, reproducible by a user."""

    oldest_pending_minutes: float | None  # the longest a current transcript has waited for its vectors
    vectors_last_hour: int
    tokens_last_hour: int  # tokens of the chunks whose vectors were written in the last hour
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
    row = conn.execute(
        q(
            conn,
            """SELECT count(*) FILTER (WHERE v.embedded_at > now() - interval '1 hour'),
                      coalesce(sum(c.token_count) FILTER (WHERE v.embedded_at > now() - interval '1 hour'), 0),
                      coalesce(sum(c.token_count), 0)
               FROM {s}.chunk_vectors v
               JOIN {s}.chunks c ON c.recording_id = v.recording_id AND c.model = v.model
                                AND c.chunk_index = v.chunk_index AND c.content_hash = v.content_hash
               WHERE v.model = %s AND v.embedded_at > now() - interval '24 hours'""",
        ),
        (model,),
    ).fetchone()
    return Trend(float(pending) if pending is not None else None, int(row[0]), int(row[1]), int(row[2]))


def verdict(
    s: DbStatus,
    failed: int,
    dead_lettered: int,
    t: Thresholds = Thresholds(),
    backlog: Backlog | None = None,
    held: Sequence[HeldRemoval] = (),
) -> tuple[str, list[str]]:
    """("healthy" | "warning" | "critical", reasons) by DESIGN.md's thresholds. With ``backlog``
    (lib/health/backlog.py), pending work younger than ``t.in_flight_grace_s`` does not count against completion,
    and the idle rule watches only work not already reported (dead-lettered, unreadable) for as long as it has
    waited: a quiet night with reported recordings, or a fresh import, is healthy. ``held``: source removals
    withheld by the removal guard (lib/sources/removal_guard.py), each a warning until confirmed or resolved."""
    reasons: list[tuple[str, str]] = []
    overdue = s.pending if backlog is None else backlog.overdue
    rate = (s.recordings - overdue) / s.recordings if s.recordings else 1.0
    if rate < t.healthy_completion:
        in_flight = (
            f" ({backlog.in_flight} newer recording(s) in flight not counted)" if backlog and backlog.in_flight else ""
        )
        reasons.append(("warning", f"completion {rate:.1%} < {t.healthy_completion:.0%}{in_flight}"))
    if dead_lettered > t.dead_letter_critical:
        reasons.append(("critical", f"{dead_lettered} dead-lettered recordings > {t.dead_letter_critical}"))
    elif dead_lettered > t.dead_letter_warn:
        reasons.append(("warning", f"{dead_lettered} dead-lettered recordings > {t.dead_letter_warn}"))
    if backlog is None:
        waiting, idle = bool(s.pending or failed), s.seconds_since_last_embedding
    else:  # nothing embedded for as long as the oldest work not yet reported has waited, at most
        waiting, idle = backlog.waiting > 0, s.seconds_since_last_embedding
        if waiting and backlog.oldest_waiting_s is not None:
            idle = backlog.oldest_waiting_s if idle is None else min(idle, backlog.oldest_waiting_s)
    if waiting:
        if idle is None or idle > t.idle_critical_s:
            what = "never" if idle is None else f"not for {idle / 3600:.1f} h"
            reasons.append(("critical", f"work is pending but nothing was embedded ({what})"))
        elif idle > t.idle_warn_s:
            reasons.append(("warning", f"work is pending but nothing was embedded for {idle / 60:.0f} min"))
    for h in held:
        reasons.append(("warning", h.reason()))
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
