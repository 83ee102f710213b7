"""The figures of an `embed-assets embed` session and how they are shown at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from rich import box
from rich.console import Console
from rich.table import Table

from embed_assets.console.events import ProviderUse

MAX_FAILURE_LINES = 50


def money(usd: float) -> str:
    if usd == 0:
        return "$0"
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.6f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{s:02d}s" if minutes >= 60 else f"{minutes}m{s:02d}s"


@dataclass
class Summary:
    """Recordings, chunks and vectors are counted in the database (counts.SessionCounts); provider figures
    come from the chunk_embeddings materializations of the session's runs."""

    model: str
    usd_per_million_tokens: float
    started_at: datetime
    attempted: int = 0
    embedded: int = 0  # new vectors written
    unchanged: int = 0  # written off as done with no vector to write (all already in place)
    failed: dict[str, str] = field(default_factory=dict)  # recording -> its error, one line
    not_attempted: int = 0
    removed: int = 0  # recordings gone from the source tables, whose partitions the session deleted: not work
    stop_reason: str = ""
    interrupted: bool = False
    chunks: int = 0  # chunks of the embedded and unchanged recordings
    vectors: int = 0  # rows written to chunk_vectors
    provider: ProviderUse = field(default_factory=ProviderUse)
    runs: int = 0
    failed_runs: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.embedded + self.unchanged

    @property
    def cost_usd(self) -> float:
        return self.provider.tokens * self.usd_per_million_tokens / 1_000_000

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("recordings embedded", f"{self.embedded:,}"),
            ("recordings unchanged", f"{self.unchanged:,}"),
            ("recordings failed", f"{len(self.failed):,}"),
            ("recordings removed", f"{self.removed:,}"),
        ]
        if self.not_attempted:
            rows.append(("recordings not attempted", f"{self.not_attempted:,}"))
        rows += [
            ("chunks", f"{self.chunks:,}"),
            ("vectors written", f"{self.vectors:,}"),
            ("chunks sent to the provider", f"{self.provider.texts:,}"),
            ("provider requests", f"{self.provider.requests:,}"),
            ("provider retries", f"{self.provider.retries:,}"),
            ("tokens sent", f"{self.provider.tokens:,}"),
            ("estimated cost", money(self.cost_usd)),
            ("runs", f"{self.runs:,} ({self.failed_runs:,} failed)"),
            ("wall time", duration(self.seconds)),
        ]
        return rows


def print_summary(summary: Summary, console: Console) -> None:
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for name, value in summary.rows():
        table.add_row(name, value)
    console.print(table)
    console.print(
        f"model {summary.model} at ${summary.usd_per_million_tokens:g} per 1M tokens; recordings, chunks and vectors "
        f"counted in the database since {summary.started_at.isoformat()} (embedded_at of embedded_recordings and "
        "chunk_vectors); provider figures from the chunk_embeddings materializations",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for n, (recording, error) in enumerate(summary.failed.items()):
        if n == MAX_FAILURE_LINES:
            console.print(f"... and {len(summary.failed) - n} more (embed-assets status)", highlight=False)
            break
        console.print(f"failed {recording}: {error}", highlight=False, markup=False, soft_wrap=True)
    if summary.stop_reason:
        console.print(summary.stop_reason, highlight=False, markup=False, soft_wrap=True)
