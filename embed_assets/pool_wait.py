"""How a step of this process waits for a slot of a Dagster pool: visibly, without burning a core, and not
forever.

Dagster 1.13's executors (in-process and multiprocess alike) ask for a slot in a loop that never sleeps:
`InstanceConcurrencyContext.interval_to_next_pending_claim_check` returns `min([0, ...])`, never more than 0,
so `ActiveExecution.sleep_til_ready` never sleeps and a blocked step spins a core at 100% (measured: README
"Runs stuck in STARTED"). The only hook on that path is the event storage's `claim_concurrency_slot`, which
the project's storage class owns (instance.py); a blocked claim lands here. It waits POLL_S before answering
(and answers "ask again now"), so the loop asks about once a second and sleeps in between; says which runs
hold the slots and since when, every REPORT_EVERY_S, on stderr (the `embed` console, the run's compute log);
ends runs that hold a slot while their worker is gone from this host (dead_runs.py); and fails the step's run
with one line after the holders have not changed for EMBED_POOL_WAIT_LIMIT_S.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import dagster as dg
from dagster._utils.concurrency import ConcurrencyClaimStatus

from embed_assets.dead_runs import fail_dead_run, holders, wait_fix
from embed_assets.lib.errors import EmbedAssetsError
from embed_assets.lib.settings import pool_wait_limit_s

POLL_S = 1.0
REPORT_EVERY_S = 5.0


class PoolWaitTimeout(EmbedAssetsError):
    """A step waited for a pool slot past EMBED_POOL_WAIT_LIMIT_S while the same runs held every slot."""


@dataclass
class _Wait:
    started: float
    changed: float  # when the set of holders last changed (a slot changing hands is progress)
    holders: frozenset[tuple[str, str]] | None = None
    reported: float = float("-inf")


class PoolWaits:
    """The waits of this process's blocked steps, keyed by (run_id, step_key)."""

    def __init__(self) -> None:
        self._waits: dict[tuple[str, str], _Wait] = {}

    def claimed(self, run_id: str, step_key: str) -> None:
        self._waits.pop((run_id, step_key), None)

    def blocked(
        self, instance: dg.DagsterInstance, status: ConcurrencyClaimStatus, run_id: str, step_key: str
    ) -> ConcurrencyClaimStatus:
        """Called for a claim that did not get a slot; returns after about POLL_S, telling Dagster to ask again."""
        pool, now = status.concurrency_key, time.monotonic()
        wait = self._waits.setdefault((run_id, step_key), _Wait(started=now, changed=now))
        held = [h for h in holders(instance, pool) if h.run_id != run_id]
        ended = [h for h in held if h.worker is not None and h.worker.state == "dead"]
        for h in ended:
            run = instance.get_run_by_id(h.run_id)
            if run is not None and h.worker is not None and fail_dead_run(instance, run, h.worker):
                _say(f"pool {pool}: run {h.run_id[:8]} held a slot but its worker ({h.worker.where}) is gone: "
                     "marked failed, its slots freed")  # fmt: skip
        if ended:
            return status.with_sleep_interval(0.0)  # a slot may be free now: ask again at once
        key = frozenset((h.run_id, h.step_key) for h in held)
        if key != wait.holders:
            wait.holders, wait.changed = key, now
        who = ", ".join(h.describe() for h in held) or "no run (the slots are being handed over)"
        limit = pool_wait_limit_s()
        if now - wait.changed > limit:
            self._waits.pop((run_id, step_key), None)
            raise PoolWaitTimeout(
                f"pool {pool} full for {now - wait.started:.0f}s (EMBED_POOL_WAIT_LIMIT_S) held by "
                + (", ".join(h.short() for h in held) or "no run")
                + f"; fix: {wait_fix(pool)}"
            )
        if now - wait.reported >= REPORT_EVERY_S:
            wait.reported = now
            _say(f"step {step_key} of run {run_id[:8]} waiting {now - wait.started:.0f}s for a slot of pool {pool}; "
                 f"held by {who}")  # fmt: skip
        time.sleep(POLL_S)
        return status.with_sleep_interval(0.0)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
