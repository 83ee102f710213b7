"""Run embed_recordings in this process over blocks of recordings, feeding the display and the summary."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import dagster as dg
import psycopg

from embed_assets.console.counts import SessionCounts
from embed_assets.console.display import Display, LiveDisplay, Snapshot, open_display
from embed_assets.console.events import LOGGER_KEY, RunEvents, RunReport, first_line, logger_definition
from embed_assets.console.summary import Summary
from embed_assets.lib.errors import EmbedAssetsError
from embed_assets.lib.health.status import last_errors
from embed_assets.lib.models import ModelSpec

PARTITIONS = "recordings"  # defs/partitions.py (console/ does not import defs/)

POLL_S = 1.0  # how often the live display counts the current run's finished recordings in the database
MIN_POLL_S = 0.2
# Progress bars that libraries draw inside a step (the local model's weight loading) would reach the console
# through Dagster's log capture, carriage returns and all; they stay visible with --verbose.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def pending_blocks(ordered: list[str], pending: set[str], size: int) -> list[list[str]]:
    """Contiguous runs of pending keys in partition order, at most ``size`` long: each is one partition range."""
    blocks: list[list[str]] = []
    block: list[str] = []
    for key in ordered:
        if key in pending:
            block.append(key)
            if len(block) == size:
                blocks.append(block)
                block = []
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    return blocks


class _Session:
    def __init__(self, summary: Summary, runs: int, display: Display) -> None:
        self.summary, self.runs, self.display = summary, runs, display
        self.events = RunEvents(self._on_event)
        self.changed = threading.Event()  # an event arrived: the poller counts again without waiting POLL_S
        self.started = time.perf_counter()
        self.run = 0
        self.lock = threading.Lock()
        self.block: list[str] = []
        self.block_done: dict[str, int] = {}  # finished recordings of the running block -> chunks

    def snapshot(self) -> Snapshot:
        with self.events.state_lock:
            report = self.events.report
            stage, running_tokens, planned = report.stage, report.provider.tokens, report.planned_chunks
        s = self.summary
        with self.lock:
            run, block, finished = self.run, len(self.block), self.block_done
            done, chunks = s.done + len(finished), s.chunks + sum(finished.values())
            tokens = s.provider.tokens + (running_tokens if block else 0)  # a finished run is in s already
            later = s.attempted - s.done - len(s.failed) - block  # recordings of the blocks still to run
        mean = chunks / done if done else 0.0
        in_block = planned - sum(finished.values()) if planned is not None and block else (block - len(finished)) * mean
        return Snapshot(
            run,
            self.runs,
            stage,
            done,
            s.attempted,
            chunks,
            max(in_block, 0) + later * mean,
            tokens,
            tokens * s.usd_per_million_tokens / 1_000_000,
            time.perf_counter() - self.started,
        )

    def refresh(self) -> None:
        self.display.update(self.snapshot())

    def _on_event(self) -> None:
        self.changed.set()
        self.refresh()


class _Poller(threading.Thread):
    """Counts the running block's finished recordings on a connection of its own: every POLL_S, and soon
    after a run event (a step ending), at most every MIN_POLL_S."""

    def __init__(self, session: _Session, counts: SessionCounts, connect: Callable[[], psycopg.Connection]) -> None:
        super().__init__(name="embed-progress", daemon=True)
        self._session, self._counts, self._connect = session, counts, connect
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            with self._connect() as conn:
                while not self._stopping.is_set():
                    self._session.changed.wait(POLL_S)
                    self._session.changed.clear()
                    if self._stopping.wait(MIN_POLL_S):
                        break
                    with self._session.lock:
                        ids = list(self._session.block)
                    done = self._counts.embedded(conn, ids) if ids else {}
                    with self._session.lock:
                        if ids == self._session.block:
                            self._session.block_done = done
                    self._session.refresh()
        except (psycopg.Error, OSError, EmbedAssetsError) as e:  # the display only: runs and counts go on
            self._session.display.line(f"progress polling stopped ({type(e).__name__}: {first_line(str(e))})")

    def stop(self) -> None:
        self._stopping.set()
        self._session.changed.set()
        self.join()


def _errors(
    conn: psycopg.Connection, model_id: str, missing: list[str], run_id: str | None, report: RunReport
) -> dict[str, str]:
    """One line per recording of the block that was not written: its recorded error from this run, the error
    its step named, or why the run never reached it."""
    recorded = last_errors(conn, model_id, missing) if missing else {}
    out = {}
    for rid in missing:
        e = recorded.get(rid)
        if e and run_id and e["run_id"] == run_id:
            message = first_line(str(e["error"]))
        elif rid in report.recording_errors:
            message = report.recording_errors[rid]
        elif report.failures:
            message = f"not embedded: its run failed ({report.failures[0]})"
        else:
            message = "not embedded although its run succeeded (see the run in the UI)"
        out[rid] = message + (f" [run {run_id[:8]}]" if run_id else "")
    return out


def run_embed(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    blocks: list[list[str]],
    *,
    conn: psycopg.Connection,
    connect: Callable[[], psycopg.Connection],
    spec: ModelSpec,
    verbose: bool = False,
    out: TextIO | None = None,
    writers: int = 1,
) -> Summary:
    """Run ``job`` once per block (a partition range) in this process. Dagster's per-event lines stay in the
    run's event log unless ``verbose``. Stops early when a run fails as a whole (a configuration or provider
    error, which every later run would repeat); the rest is counted as not attempted."""
    if not verbose:
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
    counts = SessionCounts(conn, spec.model_id)
    summary = Summary(spec.model_id, spec.usd_per_million_tokens, counts.started_at)
    summary.attempted = sum(len(b) for b in blocks)
    display = open_display(out or sys.stdout, plain=verbose)
    session = _Session(summary, len(blocks), display)
    loggers: dict[str, dg.LoggerDefinition] = {LOGGER_KEY: logger_definition(session.events)}
    run_config: dict[str, Any] = {"loggers": {LOGGER_KEY: {}}}
    if writers != 1:
        run_config["ops"] = {"chunk_embeddings": {"config": {"write_concurrency": writers}}}
    if verbose:
        loggers["console"] = dg.colored_console_logger
        run_config["loggers"]["console"] = {"config": {"log_level": "DEBUG"}}
    job = job.with_logger_defs(loggers)
    poller = _Poller(session, counts, connect) if isinstance(display, LiveDisplay) else None
    if poller:
        poller.start()
    try:
        for i, ids in enumerate(blocks, 1):
            with session.lock:
                session.run, session.block, session.block_done = i, ids, {}
            report = session.events.begin()
            session.refresh()
            run_id = _execute(job, instance, ids, run_config, report)
            written = _account(instance, session, counts, conn, ids, run_id, report)
            left = sum(len(b) for b in blocks[i:])
            if report.interrupted:
                summary.interrupted, summary.not_attempted = True, left
                summary.stop_reason = f"interrupted in run {i}; {left} recording(s) not attempted"
                break
            if report.failures and not written and not report.per_recording and left:
                summary.not_attempted = left
                summary.stop_reason = (
                    f"stopped after run {i}: it failed as a whole ({report.failures[0]}), which the remaining "
                    f"runs would repeat; {left} recording(s) not attempted. Fix it and run `embed-assets embed` again"
                )
                break
    finally:
        if poller:
            poller.stop()
        display.close()
        summary.seconds = time.perf_counter() - session.started
    return summary


def _account(
    instance: dg.DagsterInstance,
    session: _Session,
    counts: SessionCounts,
    conn: psycopg.Connection,
    ids: list[str],
    run_id: str | None,
    report: RunReport,
) -> int:
    """Add a finished run's block to the summary (counted in the database) and show its line. Returns how
    many of its recordings were written."""
    done, vectors = counts.embedded(conn, ids), counts.vectors(conn, ids)
    missing = [r for r in ids if r not in done]
    present = counts.present(conn, missing) if missing else set()
    # Deleted from the source before or during the run: not work and not a failure (their rows went with them).
    removed = [r for r in missing if r not in present]
    failed = _errors(conn, counts.model_id, [r for r in missing if r in present], run_id, report)
    embedded = sum(1 for r in done if vectors.get(r))
    summary = session.summary
    with session.lock:
        summary.embedded += embedded
        summary.unchanged += len(done) - embedded
        summary.chunks += sum(done.values())
        summary.vectors += sum(vectors.values())
        summary.failed.update(failed)
        summary.removed += len(removed)
        summary.provider.add(report.provider)
        summary.runs += 1
        summary.failed_runs += 1 if report.failures or failed else 0
        session.block, session.block_done = [], {}
    # Their partitions go as the sensor's would, now that the run naming them is over (never during it: a run's
    # partition range cannot lose its ends).
    partitions = set(instance.get_dynamic_partitions(PARTITIONS)) if removed else set()
    for key in removed:
        if key in partitions:
            instance.delete_dynamic_partition(PARTITIONS, key)
    snapshot = session.snapshot()
    session.display.update(snapshot)
    session.display.line(
        f"run {session.run}/{session.runs}: {ids[0]} .. {ids[-1]} ({len(ids)}): {embedded} embedded, "
        f"{len(done) - embedded} unchanged, {len(failed)} failed"
        f"{f', {len(removed)} removed' if removed else ''} | {snapshot.done}/{snapshot.total} recordings, "
        f"{snapshot.figures()}"
    )
    return len(done)


def _execute(
    job: dg.JobDefinition, instance: dg.DagsterInstance, ids: list[str], run_config: dict, report: RunReport
) -> str | None:
    """Run one block; its events land in ``report`` (on this thread), and so does a failure to start it."""
    tags = {"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]}
    try:
        result = job.execute_in_process(instance=instance, tags=tags, run_config=run_config, raise_on_error=False)
    except dg.DagsterError as e:  # before the run could start (a partition removed meanwhile, bad config)
        report.failures.append(f"run: {first_line(str(e))}")
        return None
    if not result.success and not report.failures:
        report.failures.append("run: failed (see the run in the UI)")
    return result.run_id
