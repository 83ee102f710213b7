"""When each failing recording's current incident began, per model: what the dead-letter count starts from."""

from __future__ import annotations

from datetime import datetime

import psycopg

from embed_assets.lib.db.names import q


def incident_starts(conn: psycopg.Connection, ids: list[str]) -> dict[str, datetime | None]:
    """For each recording of ``ids``: when its current incident began. A model it fails for (an error recorded
    for its current transcript) has been failing since its last success for that model, and never before the
    model was registered (a shadow model's incident is not an older one of the active model); the incident is
    the oldest of its failing models'. With no error recorded (a run killed before recording one): since its
    last success for any model. None: no success ever, so every attempt for the transcript counts."""
    rows = conn.execute(
        q(
            conn,
            """SELECT r.recording_id,
                      coalesce(min(greatest(e.embedded_at, m.registered_at)) FILTER (WHERE x.model IS NOT NULL),
                               max(e.embedded_at))
               FROM {s}.recordings r CROSS JOIN {s}.models m
               LEFT JOIN {s}.embedded_recordings e ON e.recording_id = r.recording_id AND e.model = m.model
               LEFT JOIN {s}.recording_errors x ON x.recording_id = r.recording_id AND x.model = m.model
                                                AND x.source_hash = r.content_hash
               WHERE r.recording_id = ANY(%s)
               GROUP BY r.recording_id""",
        ),
        (ids,),
    ).fetchall()
    return {rid: start for rid, start in rows}
