"""Pending work as the verdict weighs it (lib/health/status.py `verdict`): what is already reported, what is
simply in flight, and how long the rest has waited. Every number is the SQL below."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from embed_assets.lib.db.names import q


@dataclass(frozen=True)
class Backlog:
    pending: int  # current transcripts without the model's vectors (DbStatus.pending)
    reported: int  # of those, dead-lettered or unreadable: reported already, waiting for a person or a change
    in_flight: int  # not reported, not failed, younger than the grace period: work simply under way
    oldest_waiting_s: float | None  # how long the oldest pending recording not reported has waited

    @property
    def waiting(self) -> int:
        """Pending work the pipeline itself should be doing (what the idle rule watches)."""
        return self.pending - self.reported

    @property
    def overdue(self) -> int:
        """Pending work older than the grace period, reported or not (what the completion rule counts)."""
        return self.pending - self.in_flight


def backlog(
    conn: psycopg.Connection, model: str, dead_lettered: Sequence[str], grace_s: float, failed: Sequence[str] = ()
) -> Backlog:
    """``dead_lettered``: the recordings Dagster's run history has dead-lettered (defs/health.py); an unreadable
    source row (recording_errors.unreadable, for the current transcript) is reported too. ``failed``: recordings
    whose last attempt FAILED (awaiting the retry schedule): a failure, never work in flight, whatever its age.
    A recording's age is the time since its current transcript arrived (recordings.updated_at)."""
    row = conn.execute(
        q(
            conn,
            """SELECT count(*), count(*) FILTER (WHERE reported),
                      count(*) FILTER (WHERE NOT reported AND NOT failed AND age < %(grace)s),
                      max(age) FILTER (WHERE NOT reported)
               FROM (SELECT extract(epoch FROM now() - r.updated_at) AS age,
                            r.recording_id = ANY(%(dead)s) OR EXISTS (
                                SELECT 1 FROM {s}.recording_errors x
                                WHERE x.recording_id = r.recording_id AND x.model = %(m)s AND x.unreadable
                                  AND x.source_hash = r.content_hash) AS reported,
                            r.recording_id = ANY(%(failed)s) AS failed
                     FROM {s}.recordings r
                     LEFT JOIN {s}.embedded_recordings e ON e.recording_id = r.recording_id AND e.model = %(m)s
                     WHERE e.source_hash IS DISTINCT FROM r.content_hash) p""",
        ),
        {"m": model, "dead": list(dead_lettered), "grace": grace_s, "failed": list(failed)},
    ).fetchone()
    return Backlog(int(row[0]), int(row[1]), int(row[2]), float(row[3]) if row[3] is not None else None)
