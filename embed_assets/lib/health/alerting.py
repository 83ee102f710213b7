"""When to send what: one message per change of verdict, failed runs in at most one digest per interval,
the heartbeat after each new evaluation that is not critical. A pure function over a small state that the alert sensor
keeps in its cursor (no table of our own). Dagster-free.

Failed runs accumulate in a window. A change of verdict reports the window with it (the 100 failed runs of
an incident are part of its one error message, not a second one); otherwise the window is sent as a digest
once it is `digest_minutes` old, so digests are at least that far apart and never one per partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from embed_assets.lib.health.messages import FailureWindow, Message, Observation, digest, state_change

MAX_PENDING = 20  # undelivered messages kept for later ticks
REDELIVERY_TICKS = 3  # ticks an undelivered message is tried again before it is dropped (logged)


@dataclass
class Pending:
    channel: str
    message: Message
    ticks_left: int = REDELIVERY_TICKS


@dataclass
class AlertState:
    verdict: str = "healthy"  # the last verdict alerted on (a fresh install is presumed healthy)
    since: datetime | None = None  # when that verdict began
    evaluation_id: int = 0  # the last pipeline_health materialization seen
    runs_after: datetime | None = None  # failed runs updated after this are new
    window: FailureWindow | None = None
    pending: list[Pending] = field(default_factory=list)

    def to_json(self) -> str:
        w = self.window
        return json.dumps(
            {
                "verdict": self.verdict,
                "since": self.since.isoformat() if self.since else None,
                "eval": self.evaluation_id,
                "runs_after": self.runs_after.isoformat() if self.runs_after else None,
                "window": None
                if w is None
                else {
                    "first": w.first.isoformat(),
                    "last": w.last.isoformat(),
                    "runs": w.runs,
                    "recordings": w.recordings,
                    "causes": w.causes,
                },
                "pending": [
                    {"channel": p.channel, "message": p.message.as_dict(), "ticks_left": p.ticks_left}
                    for p in self.pending
                ],
            }
        )

    @classmethod
    def from_json(cls, raw: str | None) -> AlertState:
        if not raw:
            return cls()
        d = json.loads(raw)
        w = d.get("window")

        def ts(v: str | None) -> datetime | None:
            return datetime.fromisoformat(v) if v else None

        return cls(
            verdict=d.get("verdict", "healthy"),
            since=ts(d.get("since")),
            evaluation_id=int(d.get("eval", 0)),
            runs_after=ts(d.get("runs_after")),
            window=None
            if not w
            else FailureWindow(
                datetime.fromisoformat(w["first"]),
                datetime.fromisoformat(w["last"]),
                w["runs"],
                w["recordings"],
                dict(w["causes"]),
            ),
            pending=[
                Pending(p["channel"], Message.from_dict(p["message"]), p["ticks_left"]) for p in d.get("pending", [])
            ],
        )


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    failed_at: datetime
    recordings: int  # partitions the run covered (1 for a single-partition run, the range's size for a backfill)
    cause: str  # first line of the error that failed it


@dataclass
class Decision:
    messages: list[Message]
    heartbeat: bool  # a new healthy evaluation: ping EMBED_HEARTBEAT_URL


def decide(
    state: AlertState,
    observation: Observation | None,
    failures: list[FailedRun],
    now: datetime,
    digest_interval: timedelta,
) -> Decision:
    """Advance ``state`` (in place) by one tick and say what to send."""
    for f in failures:
        if state.window is None:
            state.window = FailureWindow(f.failed_at, f.failed_at)
        state.window.add(f.failed_at, f.recordings, f.cause)
        state.runs_after = max(state.runs_after or f.failed_at, f.failed_at)
    messages: list[Message] = []
    heartbeat = False
    if observation is not None and observation.evaluation_id != state.evaluation_id:
        state.evaluation_id = observation.evaluation_id
        heartbeat = observation.verdict != "critical"  # a warning must not silence the dead man's switch
        if observation.verdict != state.verdict:
            if observation.verdict == "healthy":
                began = state.since or observation.evaluated_at
                new_since = observation.evaluated_at
            else:
                first_failure = state.window.first if state.window and state.verdict == "healthy" else None
                began = new_since = min(filter(None, (first_failure, observation.evaluated_at)))
            messages.append(state_change(state.verdict, observation, began, state.window))
            state.verdict, state.since, state.window = observation.verdict, new_since, None
    if state.window is not None and now - state.window.first >= digest_interval:
        messages.append(digest(state.window, state.verdict))
        state.window = None
    return Decision(messages, heartbeat)


def initial_runs_after(now: datetime, digest_interval: timedelta) -> datetime:
    """A fresh cursor looks back one digest interval (at least an hour) for failed runs."""
    return now.astimezone(UTC) - max(digest_interval, timedelta(hours=1))
