"""Runs whose worker process is gone: found, marked failed, and their pool slots released.

Beside instance.py because the instance uses it (its run launcher answers the run-monitoring daemon's health
check with it, and its event storage names the holders of a pool a step waits for); `embed-assets embed`
calls `reclaim_dead_runs` before its first run, for the case without a daemon. Every change goes through
Dagster's own instance APIs (report_run_failed, free_concurrency_slots_for_run), never SQL on its tables.

A run records where its worker runs (host, pid and the process's start time) as the tag WORKER_TAG when it
starts. A worker is dead only when it ran on this host and that process is gone (or is another process now
holding a reused pid). A run from another host, or one without the tag (started before this tag existed, or
on another storage), may still be alive: it is left alone and named.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import FINISHED_STATUSES

WORKER_TAG = "embed_assets/worker"
POOL = "embedding_provider"
Liveness = Literal["alive", "dead", "elsewhere", "unknown"]


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None when it is gone
    or a zombie (killed, not yet reaped: as dead as it gets)."""
    try:
        stat = open(f"/proc/{pid}/stat", encoding="ascii").read()  # noqa: SIM115 (one read)
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def this_worker() -> str:
    """WORKER_TAG's value for this process: host:pid:start-ticks."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '-'}"


@dataclass(frozen=True)
class Worker:
    run_id: str
    state: Liveness
    where: str  # "pid 123 on host-a", or why it is unknown

    def describe(self) -> str:
        return {
            "alive": f"{self.where}, alive",
            "dead": f"{self.where}, gone",
            "elsewhere": f"{self.where}: another host, may be alive; left alone",
            "unknown": f"{self.where}; left alone",
        }[self.state]


def worker_of(run: dg.DagsterRun) -> Worker:
    """Where ``run``'s worker runs and whether it is still there."""
    tag = run.tags.get(WORKER_TAG)
    if not tag:
        return Worker(run.run_id, "unknown", "no worker recorded")
    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return Worker(run.run_id, "unknown", f"worker tag {tag!r} not understood")
    host, pid, ticks = parts[0], int(parts[1]), parts[2]
    where = f"pid {pid} on {host}"
    if host != socket.gethostname():
        return Worker(run.run_id, "elsewhere", where)
    now = _start_ticks(pid)
    if now is None or (ticks != "-" and now != ticks):
        return Worker(run.run_id, "dead", where)
    return Worker(run.run_id, "alive", where)


def started_runs(instance: dg.DagsterInstance, job_name: str | None = None) -> list[dg.DagsterRun]:
    filters = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], job_name=job_name)
    return list(instance.get_runs(filters=filters))


def fail_dead_run(instance: dg.DagsterInstance, run: dg.DagsterRun, worker: Worker) -> bool:
    """Mark ``run`` failed and free its slots and pending steps, if it is still STARTED (another process may
    have got there first). Returns whether this call ended it."""
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.status != dg.DagsterRunStatus.STARTED:
        return False
    instance.report_run_failed(
        current,
        f"Run worker {worker.where} is gone (killed, out of memory, or its machine stopped) while the run was "
        "STARTED: marked failed by embed_assets and its concurrency slots freed, so later runs are not blocked.",
        JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
    )
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return True


@dataclass
class Reclaimed:
    ended: list[Worker]
    left_alone: list[Worker]  # STARTED runs that may be alive somewhere we cannot see
    freed: list[str] = field(default_factory=list)  # runs that had ended (or were deleted) still holding slots


def free_ended_holders(instance: dg.DagsterInstance) -> list[str]:
    """Free the pool slots still held by runs that have ended (or no longer exist): a worker that lost its
    database at the end, or a run failed by the daemon's run monitoring that stopped before it freed the slots
    (free_slots_after_run_end_seconds later). Nobody else gives such a slot back without a daemon. Returns
    those runs' ids."""
    run_ids = list(instance.event_log_storage.get_concurrency_run_ids())
    if not run_ids:
        return []
    live = {r.run_id for r in instance.get_runs(dg.RunsFilter(run_ids=run_ids)) if r.status not in FINISHED_STATUSES}
    ended = [run_id for run_id in run_ids if run_id not in live]
    for run_id in ended:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return ended


def reclaim_dead_runs(
    instance: dg.DagsterInstance, job_name: str | None = None, say: Callable[[str], None] | None = None
) -> Reclaimed:
    """End ``job_name``'s STARTED runs whose worker is gone on this host, freeing their slots; name, and leave
    alone, those that may be alive on another host; free the slots that runs of any job still hold after they
    ended. ``say`` gets one line per run touched or left alone."""
    out = Reclaimed([], [])
    for run in started_runs(instance, job_name):
        worker = worker_of(run)
        if worker.state == "dead":
            if fail_dead_run(instance, run, worker):
                out.ended.append(worker)
                if say:
                    say(f"run {run.run_id[:8]} was STARTED but its worker ({worker.where}) is gone: marked failed, "
                        "its pool slots freed")  # fmt: skip
        elif worker.state in ("elsewhere", "unknown"):
            out.left_alone.append(worker)
            if say:
                say(f"run {run.run_id[:8]} is STARTED ({worker.describe()}); if it is dead, end it on its page in "
                    "the UI: Terminate, then Free concurrency slots")  # fmt: skip
    out.freed = free_ended_holders(instance)
    for run_id in out.freed:
        if say:
            say(f"run {run_id[:8]} had ended but still held pool slots: freed")
    return out


@dataclass(frozen=True)
class Holder:
    """A step holding a slot of a pool."""

    run_id: str
    step_key: str
    since: datetime | None
    status: str  # the run's status
    worker: Worker | None  # for STARTED runs

    @property
    def dead(self) -> bool:
        """The slot is held by a run that ended or whose worker is gone: nobody will ever give it back."""
        return self.status in {s.value for s in FINISHED_STATUSES} or (
            self.worker is not None and self.worker.state == "dead"
        )

    def short(self) -> str:
        state = self.worker.state if self.worker else self.status.lower()
        return f"run {self.run_id[:8]} ({state})"

    def describe(self) -> str:
        since = f" since {self.since.astimezone():%H:%M:%S}" if self.since else ""
        state = f"run {self.status}" + (f", worker {self.worker.describe()}" if self.worker else "")
        return f"run {self.run_id[:8]} ({self.step_key}{since}; {state})"


def holders(instance: dg.DagsterInstance, pool: str = POOL) -> list[Holder]:
    """The steps holding ``pool``'s slots, with their run's state."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    assigned = {(p.run_id, p.step_key): p.assigned_timestamp for p in info.pending_steps}
    run_ids = list({s.run_id for s in info.claimed_slots})
    runs = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(run_ids=run_ids))} if run_ids else {}
    out = []
    for slot in info.claimed_slots:
        run = runs.get(slot.run_id)
        status = run.status.value if run else "DELETED"
        worker = worker_of(run) if run is not None and run.status == dg.DagsterRunStatus.STARTED else None
        out.append(Holder(slot.run_id, slot.step_key, assigned.get((slot.run_id, slot.step_key)), status, worker))
    return out


def dead_holders(instance: dg.DagsterInstance, pools: Iterable[str] = (POOL,)) -> list[str]:
    """One line per slot held by a run that ended or whose worker is gone (for `status` and /readyz): such a
    slot is never given back by its run. Empty when every slot is held by a live run."""
    lines = []
    for pool in pools:
        for h in holders(instance, pool):
            if h.dead:
                lines.append(
                    f"pool {pool}: slot held by {h.describe()}; free it with `embed-assets embed` (reclaims dead "
                    f"runs) or `dagster instance concurrency set {pool} <limit>` after the run is ended"
                )
    return lines


def wait_fix(pool: str) -> str:
    return f"`dagster instance concurrency set {pool} N`, or end dead runs (`embed-assets embed` does)"
