"""The `embed-assets embed` console: runs embed_recordings in this process, block by block, with a progress
display fed by the runs' events and a summary whose counts come from the database."""

from embed_assets.console.run import pending_blocks, run_embed
from embed_assets.console.summary import Summary

__all__ = ["Summary", "pending_blocks", "run_embed"]
