"""Alert messages: what is wrong, since when, how many recordings, what to do. Composed from a health
evaluation and a summary of failed runs; every message passes `redact` before any channel sees it.
Dagster-free."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime

# What a user reads for each verdict (the words: healthy, warn, error, recovered).
LABELS = {"healthy": "OK", "warning": "WARN", "critical": "ERROR"}
RELAUNCH = (
    "re-launch the failed partitions (Dagster UI: Catalog > chunk_embeddings > Materialize, "
    "'Failed' partitions; or `embed-assets embed`)"
)


@dataclass(frozen=True)
class Observation:
    """One `pipeline_health` evaluation, as its metadata recorded it."""

    evaluation_id: int  # the materialization's storage id: new evaluation <=> new id
    evaluated_at: datetime
    verdict: str  # healthy | warning | critical
    reasons: tuple[str, ...]
    problems: tuple[str, ...]  # configuration problems, each naming its fix
    recordings: int
    affected: int  # recordings whose current transcript has no vectors (never embedded or stale)
    failed: int
    dead_lettered: int


@dataclass
class FailureWindow:
    """Failed runs not yet reported, accumulated across sensor ticks (kept in the sensor's cursor)."""

    first: datetime
    last: datetime
    runs: int = 0
    recordings: int = 0
    causes: dict[str, int] = field(default_factory=dict)  # first line of the error -> runs

    def add(self, when: datetime, recordings: int, cause: str) -> None:
        self.first, self.last = min(self.first, when), max(self.last, when)
        self.runs += 1
        self.recordings += recordings
        self.causes[cause] = self.causes.get(cause, 0) + 1
        if len(self.causes) > 20:  # bounded: keep the most frequent
            self.causes = dict(sorted(self.causes.items(), key=lambda kv: -kv[1])[:20])


@dataclass(frozen=True)
class Message:
    kind: str  # error | warn | recovered | digest
    title: str
    text: str
    fields: dict[str, object] = field(default_factory=dict)  # structured copy for the generic webhook

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Message:
        return cls(d["kind"], d["title"], d["text"], dict(d.get("fields", {})))


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    minutes = max(0, round(seconds / 60))
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _failures(w: FailureWindow | None) -> list[str]:
    if w is None or not w.runs:
        return []
    top = sorted(w.causes.items(), key=lambda kv: -kv[1])[:3]
    lines = [f"Failed runs since {_when(w.first)}: {w.runs} run(s) over {w.recordings} recording(s); causes:"]
    lines += [f"  - {n}x {cause}" for cause, n in top]
    if len(w.causes) > 3:
        lines.append(f"  - and {len(w.causes) - 3} other cause(s)")
    return lines


def _headline(problem: str) -> str:
    """What is wrong, without the fix: the configuration check writes "<what is wrong>; <the fix>"."""
    return problem.split("; ", 1)[0]


def _fix(problem: str) -> str:
    return problem.split("; ", 1)[1] if "; " in problem else problem


def advice(o: Observation) -> list[str]:
    """What to do, from the concrete causes: configuration problems first (each names its own fix)."""
    todo = [f"{_fix(p)}, then {RELAUNCH}" for p in o.problems]
    if o.dead_lettered:
        todo.append(
            f"{o.dead_lettered} recording(s) are dead-lettered (no more automatic retries): `embed-assets status` "
            "shows each one's last error; fix the cause, then re-launch them with the small-batch preset"
        )
    if not o.problems and o.failed:
        todo.append(
            f"{o.failed} recording(s) failed and await the retry schedule: `embed-assets status` shows their errors"
        )
    if not todo and o.verdict != "healthy":
        todo.append(
            "check that the Dagster daemon runs and the run queue moves (Dagster UI: Runs), "
            "and `embed-assets status` for what is pending"
        )
    return todo


def state_change(previous: str, o: Observation, since: datetime, window: FailureWindow | None) -> Message:
    """The message for a change of verdict. ``since``: when the new state began (the first failure of an
    incident, when that came before the evaluation that saw it)."""
    recovered = o.verdict == "healthy"
    kind = "recovered" if recovered else "error" if o.verdict == "critical" else "warn"
    label = "RECOVERED" if recovered else LABELS[o.verdict]
    numbers = (
        f"{o.affected} of {o.recordings} recording(s) have no current vectors "
        f"({o.failed} failed, {o.dead_lettered} dead-lettered)"
    )
    if recovered:
        title = f"[embed_assets] RECOVERED: healthy again after {LABELS.get(previous, previous)}"
        lines = [
            f"embed_assets is healthy again since {_when(o.evaluated_at)} "
            f"({LABELS.get(previous, previous)} for {_duration((o.evaluated_at - since).total_seconds())}).",
            f"Now: {numbers}.",
            *_failures(window),
            "Nothing to do.",
        ]
    else:
        title = f"[embed_assets] {label}: {_headline((*o.problems, *o.reasons, 'unhealthy')[0])}"[:200]
        lines = [
            f"embed_assets is {label} ({o.verdict}) since {_when(since)}, previously {LABELS.get(previous, previous)}.",
            "What is wrong:",
            *[f"  - {r}" for r in (*o.problems, *o.reasons)],
            f"Affected: {numbers}.",
            *_failures(window),
            "What to do:",
            *[f"  - {a}" for a in advice(o)],
        ]
    fields = {
        "verdict": o.verdict,
        "previous": previous,
        "since": since.isoformat(),
        "recordings": o.recordings,
        "affected_recordings": o.affected,
        "failed": o.failed,
        "dead_lettered": o.dead_lettered,
        "failed_runs": window.runs if window else 0,
    }
    return Message(kind, title, "\n".join(lines), fields)


def digest(window: FailureWindow, verdict: str) -> Message:
    """Failed runs of one digest interval, however many partitions they covered: one message."""
    lines = [
        *_failures(window),
        f"Last failure {_when(window.last)}; the pipeline's verdict is {LABELS.get(verdict, verdict)}.",
        "What to do: `embed-assets status` shows each failed recording's last error; the retry schedule re-launches "
        f"them with the small-batch preset, or {RELAUNCH}.",
    ]
    top = max(window.causes.items(), key=lambda kv: kv[1])[0] if window.causes else "failed runs"
    title = f"[embed_assets] {window.runs} failed run(s): {top}"[:200]
    fields = {
        "verdict": verdict,
        "failed_runs": window.runs,
        "affected_recordings": window.recordings,
        "since": window.first.isoformat(),
        "causes": window.causes,
    }
    return Message("digest", title, "\n".join(lines), fields)


_TOKEN = re.compile(r"[A-Za-z0-9_\-]{8,}")


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every secret value, and any 8+ character fragment of one (a key's tail in a provider's error,
    a token from a webhook path), from ``text``."""
    values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    for s in values:
        text = text.replace(s, "[redacted]")
    if not values:
        return text
    return _TOKEN.sub(lambda m: "[redacted]" if any(m.group(0) in s for s in values) else m.group(0), text)


def redact_message(m: Message, secrets: Iterable[str]) -> Message:
    secrets = list(secrets)
    fields = {k: redact(v, secrets) if isinstance(v, str) else v for k, v in m.fields.items()}
    if isinstance(fields.get("causes"), dict):
        fields["causes"] = {redact(k, secrets): v for k, v in fields["causes"].items()}
    return Message(m.kind, redact(m.title, secrets), redact(m.text, secrets), fields)
