"""The `embed-assets embed` console: runs embed_recordings in this process, block by block, with a progress
display fed by the runs' events and a summary whose counts come from the database. ``console.text`` is the one
place user data is printed. Names load on first use: importing ``console.text`` must not import Dagster."""

from typing import Any

__all__ = ["Summary", "pending_blocks", "run_embed"]


def __getattr__(name: str) -> Any:
    if name in ("pending_blocks", "run_embed"):
        from embed_assets.console import run

        return getattr(run, name)
    if name == "Summary":
        from embed_assets.console.summary import Summary

        return Summary
    raise AttributeError(name)
