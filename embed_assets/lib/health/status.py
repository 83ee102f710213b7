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
from embed_assets.lib.vector_cache import billed_since


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
                # MATERIALIZED: with the LIMIT alone the planner walks every recording by updated_at, probing
                # embedded_recordings once each, when few or none are stale (0.69 s at 100,000; `make bench`)
                """WITH stale AS MATERIALIZED (
                       SELECT r.recording_id, r.updated_at FROM {s}.recordings r
                       JOIN {s}.embedded_recordings e ON e.recording_id = r.recording_id AND e.model = %s
                       WHERE e.source_hash <> r.content_hash)
               SELECT recording_id FROM stale ORDER BY updated_at DESC LIMIT %s""",
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


# -- status honesty (issue 37): what `embed-assets status` cannot see in the database ---------------------------
# Exit codes of `embed-assets status` (the Nagios plugin convention, so monitoring tools read them as is).
EXIT_CODES = {"healthy": 0, "warning": 1, "critical": 2}
STATUS_UNKNOWN = 3  # the status could not be evaluated (database or Dagster storage unreachable, say)
# The daemons a deployment needs: the sensor finds new recordings, the scheduler runs the retry and health
# schedules, the run coordinator starts queued runs (dagster-daemon's own type names).
REQUIRED_DAEMONS = ("SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR")
SENSOR_NAME = "new_recordings_sensor"


@dataclass(frozen=True)
class DaemonFacts:
    """What the Dagster instance records of its daemon (defs/liveness.py reads them): the latest heartbeat of
    each daemon type and the sensor's last tick, as ages in seconds at the time they were read."""

    expected: bool  # whether a daemon is expected to run (EMBED_EXPECT_DAEMON, else: has one ever run here)
    why: str  # why it is (not) expected, for the user
    heartbeat_age_s: dict[str, float] = field(default_factory=dict)  # daemon type -> seconds since its heartbeat
    sensor_status: str | None = None  # the sensor's state in the instance (RUNNING, STOPPED, ...), None: never seen
    tick_age_s: float | None = None  # seconds since the sensor's last tick started
    tick_status: str | None = None  # SUCCESS, SKIPPED, FAILURE, STARTED
    tick_error: str | None = None  # the first line of a failed tick's error
    required: tuple[str, ...] = REQUIRED_DAEMONS  # the daemon types this instance runs (of REQUIRED_DAEMONS)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["heartbeat_age_s"] = {k: round(v, 1) for k, v in self.heartbeat_age_s.items()}
        d["tick_age_s"] = None if self.tick_age_s is None else round(self.tick_age_s, 1)
        return d


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def daemon_findings(f: DaemonFacts, stale_s: float) -> list[tuple[str, str]]:
    """(level, reason) for a daemon that is expected but not seen working: no recent heartbeat, the sensor
    stopped, not ticking or failing. Nothing when no daemon is expected."""
    if not f.expected:
        return []
    out: list[tuple[str, str]] = []
    missing = [d for d in f.required if d not in f.heartbeat_age_s]
    stale = [d for d in f.required if f.heartbeat_age_s.get(d, 0) > stale_s]
    fix = (
        "start it (`embed-assets dev`, or `dagster-daemon run` where the deployment runs it), or set "
        "EMBED_EXPECT_DAEMON=0 when only the CLI is used"
    )
    if stale:
        oldest = max(f.heartbeat_age_s[d] for d in stale)
        out.append(
            (
                "warning",
                f"the Dagster daemon's last heartbeat ({', '.join(stale)}) was {_age(oldest)} ago (> {_age(stale_s)}): "
                f"new recordings are not picked up and queued runs do not start; {fix}",
            )
        )
    if missing:
        out.append(("warning", f"no heartbeat of the Dagster daemon ({', '.join(missing)}) was ever recorded; {fix}"))
    fix = "see above" if out else fix  # the daemon down explains a sensor that does not tick
    if f.sensor_status == "STOPPED":
        out.append(
            ("warning", f"{SENSOR_NAME} is stopped: new and changed recordings are not picked up; start it in the UI")
        )
    elif f.tick_age_s is None:
        out.append(("warning", f"{SENSOR_NAME} has never ticked in this instance ({fix})"))
    elif f.tick_age_s > stale_s:
        out.append(("warning", f"{SENSOR_NAME} last ticked {_age(f.tick_age_s)} ago (> {_age(stale_s)}; {fix})"))
    if f.tick_status == "FAILURE":
        out.append(("warning", f"the last tick of {SENSOR_NAME} failed: {f.tick_error or 'see the sensor in the UI'}"))
    return out


def unregistered_finding(unregistered: int, daemon_working: bool) -> tuple[str, str] | None:
    """Source rows without a partition are work that completion does not count yet: a warning unless a working
    daemon's sensor is there to register them on its next tick."""
    if not unregistered or daemon_working:
        return None
    return (
        "warning",
        f"{unregistered} source row(s) not registered yet (not counted in completion); `embed-assets embed` "
        "registers and embeds them, as the sensor does when the daemon runs",
    )


def with_findings(level: str, reasons: list[str], findings: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """The verdict raised to the worst of ``findings``, their reasons added."""
    rank = {"healthy": 0, "warning": 1, "critical": 2}
    for found, _ in findings:
        if rank[found] > rank[level]:
            level = found
    return level, [*reasons, *(r for _, r in findings)]


def unregistered_ids(partitions: set[str], recordings: set[str], source_ids: set[str] | None) -> set[str]:
    """Recordings no partition stands for yet: rows of the recordings table without a partition (loaded with
    --no-register, or added since the sensor's last tick) and, with EMBED_SOURCE, the source's ids not in the
    registry yet (its next sync adds them)."""
    pending = recordings - partitions
    if source_ids is not None:
        pending |= source_ids - recordings
    return pending
