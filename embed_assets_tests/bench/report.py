"""Bench output: one line per figure, `name value unit` plus its ratio to the floor, and the same as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    floor: float | None = None  # the same quantity for the floor it is compared with
    floor_name: str = ""
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Performance relative to the floor (1.0 = as fast as the floor; higher is better)."""
        if self.floor is None or not self.value or not self.floor:
            return None
        return self.value / self.floor if self.higher_is_better else self.floor / self.value

    def line(self) -> str:
        text = f"{self.name} {self.value:.4g} {self.unit}"
        if self.ratio is not None:
            text += f"  ({self.ratio:.2f}x of {self.floor_name} {self.floor:.4g} {self.unit})"
        return text + (f"  [{self.note}]" if self.note else "")


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(figure.line(), flush=True)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{**asdict(f), "ratio": f.ratio} for f in self.figures], indent=2))


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables (the resources read them at run time) for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
