"""Progress while the runs go: a live bar on a terminal, plain lines anywhere else (CI logs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TextIO

from rich.console import RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from embed_assets.console.summary import money
from embed_assets.console.text import UserConsole


@dataclass(frozen=True)
class Snapshot:
    run: int
    runs: int
    stage: str
    done: int
    total: int
    chunks: int
    chunks_left: float  # estimated: the running block's planned chunks, else the mean chunks per recording so far
    tokens: int
    cost_usd: float
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.chunks / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta(self) -> str:
        """By chunks, not recordings: one three-hour call holds as many chunks as a hundred short ones."""
        if not self.rate:
            return "-"
        return str(timedelta(seconds=round(self.chunks_left / self.rate)))

    def figures(self) -> str:
        return (
            f"{self.chunks:,} chunks, {self.tokens:,} tokens, {money(self.cost_usd)}, "
            f"{self.rate:.1f} chunks/s, ETA {self.eta}"
        )


class Display(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...

    def line(self, text: str) -> None: ...

    def close(self) -> None: ...


class PlainDisplay:
    """One line per run, nothing in between: no escape codes, no carriage returns."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def update(self, snapshot: Snapshot) -> None:
        pass

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def close(self) -> None:
        pass


class _TwoLines(Progress):
    """The bar on one line and the figures under it, so both fit an 80-column terminal."""

    figures = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield Text("  " + self.figures, no_wrap=True, overflow="ellipsis")


class LiveDisplay:
    """A rich progress bar on a duplicate of the terminal's stderr: while a step runs, Dagster points the
    process's stdout/stderr at the run's compute log files, and the bar must not end up in them."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._progress = _TwoLines(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("recordings"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=UserConsole(file=stream),
            redirect_stdout=False,  # Dagster redirects the file descriptors itself during steps
            redirect_stderr=False,
        )
        self._task = self._progress.add_task("starting", total=None, eta="-")
        self._progress.start()

    def update(self, snapshot: Snapshot) -> None:
        self._progress.figures = (
            f"{snapshot.chunks:,} chunks, {snapshot.tokens:,} tokens, {money(snapshot.cost_usd)}, "
            f"{snapshot.rate:.1f} chunks/s"
        )
        self._progress.update(
            self._task,
            description=f"run {snapshot.run}/{snapshot.runs} {snapshot.stage:<9}",
            completed=snapshot.done,
            total=snapshot.total,
            eta=snapshot.eta,
        )
        self._progress.refresh()  # now, not at the next tick: a stage may last less than one

    def line(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        self._progress.stop()
        self._stream.close()


def open_display(out: TextIO, plain: bool) -> Display:
    """Live when stderr is a terminal (and ``plain`` is not asked for), else plain lines on ``out``."""
    if not plain and sys.stderr.isatty():
        return LiveDisplay(os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8"))
    return PlainDisplay(out)
