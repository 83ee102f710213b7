"""Debian's Chromium for Playwright (it cannot download its own browser here), and the flags it needs."""

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A closed network (no background connections) as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
