"""What an in-process run reports as it goes, caught by a Dagster logger instead of printed.

`execute_in_process` has no event callback, but every event of the run passes through the job's loggers
(with the DagsterEvent attached to the log record), and a job given loggers of its own does not get Dagster's
colored console logger: so this logger both feeds the progress display and silences the per-event lines.
The events still go to the run's event log (the UI) as always."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.log_manager import get_log_record_metadata, has_log_record_metadata

LOGGER_KEY = "embed_assets_console"
CHUNKS = dg.AssetKey("transcript_chunks")
EMBEDDINGS = dg.AssetKey("chunk_embeddings")
STAGES = {"transcript_chunks": "chunking", "chunk_embeddings": "embedding"}


@dataclass
class ProviderUse:
    """Summed from chunk_embeddings' materialization metadata (a failed step's: its usage observation): what the
    provider reported, per step."""

    requests: int = 0
    retries: int = 0
    tokens: int = 0
    texts: int = 0  # chunk texts sent (metadata `embedded`); the others reused a stored vector

    def add(self, other: ProviderUse) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.tokens += other.tokens
        self.texts += other.texts

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ProviderUse:
        def num(key: str) -> int:
            value = metadata.get(key)
            return int(getattr(value, "value", value) or 0)

        return cls(num("provider_requests"), num("provider_retries"), num("tokens"), num("embedded"))


@dataclass
class RunReport:
    """One run as its events told it."""

    stage: str = "starting"
    provider: ProviderUse = field(default_factory=ProviderUse)
    planned_chunks: int | None = None  # chunks of the run's recordings, once transcript_chunks is done
    failures: list[str] = field(default_factory=list)  # one line per failed step (or the run)
    recording_errors: dict[str, str] = field(default_factory=dict)  # from the failures' metadata
    per_recording: bool = False  # a failure named the recordings it failed; the others could work
    interrupted: bool = False  # Ctrl-C or a cancel: the session stops
    _steps_counted: set[str] = field(default_factory=set)


def first_line(text: str | None, limit: int = 300) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _value(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata.get(key)
    return getattr(value, "value", value)


class RunEvents(logging.Handler):
    """Collects the current run's events into a RunReport and calls ``on_change`` after each relevant one.
    Called on the run's thread; readers on other threads take ``state_lock`` (``lock`` is logging.Handler's own)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        super().__init__(logging.DEBUG)
        self.state_lock = threading.Lock()
        self.report = RunReport()
        self._on_change = on_change

    def begin(self) -> RunReport:
        with self.state_lock:
            self.report = RunReport()
            return self.report

    def emit(self, record: logging.LogRecord) -> None:
        if not has_log_record_metadata(record):
            return
        event = get_log_record_metadata(record).get("dagster_event")
        if event is None:
            return
        with self.state_lock:
            changed = self._apply(self.report, event)
        if changed:
            self._on_change()

    def _apply(self, report: RunReport, event: dg.DagsterEvent) -> bool:
        if event.event_type == dg.DagsterEventType.STEP_START:
            report.stage = STAGES.get(event.step_key or "", "checks")
            return True
        if event.is_asset_observation:
            observation = event.asset_observation_data.asset_observation
            # A step that failed (or is retried) reports what it asked the provider for: paid for all the same.
            if observation.asset_key == EMBEDDINGS and "provider_requests" in observation.metadata:
                report.provider.add(ProviderUse.from_metadata(observation.metadata))
                return True
            return False
        if event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
            if "recording" in materialization.metadata:
                return False  # one recording's own figures, before its step failed: the usage came as an observation
            # A many-partition step stores one materialization per partition, each with the step's totals.
            if event.step_key in report._steps_counted:
                return False
            report._steps_counted.add(event.step_key or "")
            if materialization.asset_key == CHUNKS:
                report.planned_chunks = int(_value(materialization.metadata, "chunks") or 0)
            elif materialization.asset_key == EMBEDDINGS:
                report.provider.add(ProviderUse.from_metadata(materialization.metadata))
            return True
        if event.is_step_failure:
            data = event.step_failure_data
            user = data.user_failure_data
            message = first_line((user.description if user else None) or (data.error.message if data.error else ""))
            report.failures.append(f"{event.step_key}: {message}")
            metadata = user.metadata if user else {}
            failed = _value(metadata, "failed_recordings")
            if isinstance(failed, dict):
                report.per_recording = True
                report.recording_errors.update({str(k): first_line(str(v)) for k, v in failed.items()})
            recording = _value(metadata, "recording")
            if isinstance(recording, str):
                report.recording_errors.setdefault(recording, message)
            return True
        if event.is_run_failure:
            data = event.job_failure_data if event.event_specific_data else None
            # Dagster turns Ctrl-C in an in-process run into a run failure and returns normally.
            reason = getattr(data.failure_reason if data else None, "value", None)
            report.interrupted = reason == "UNEXPECTED_TERMINATION"
            if not report.failures:
                message = data.error.message if data and data.error else event.message
                report.failures.append(f"run: {first_line(message)}")
            return True
        if event.event_type == dg.DagsterEventType.RUN_CANCELED:
            report.interrupted = True
            report.failures.append("run: canceled")
            return True
        return False


def logger_definition(handler: logging.Handler) -> dg.LoggerDefinition:
    """A logger for ``job.with_logger_defs``: hands every record of the run to ``handler``."""

    def build(_: dg.InitLoggerContext) -> logging.Logger:
        log = logging.Logger("embed_assets.console", logging.DEBUG)
        log.addHandler(handler)
        return log

    return dg.LoggerDefinition(build, description="Feeds `embed-assets embed`'s progress display.")
