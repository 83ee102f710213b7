"""The one place user data reaches a terminal: as text, never as markup, with what a reader cannot see made
visible. Speaker names, transcripts, recording ids, paths and arguments are user data: a speaker named ``[/]``
must not crash a search's output (Rich MarkupError), ``[link=...]Support Desk[/link]`` must not print a
clickable hyperlink, and control, C1 and bidi characters (which can move or hide text) print as escapes."""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.console import Console
from rich.text import Text

_KEEP = {"\n", "\t"}


def visible(text: str) -> str:
    """``text`` with control (C0, C1), format (zero-width, bidi overrides), surrogate, private-use and
    unassigned characters shown as ``\\uXXXX`` escapes; everything else as it is."""
    if text.isprintable():  # the common case, in C: no work
        return text
    out = []
    for ch in text:
        if ch in _KEEP or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of our own styling around user text: plain strings are user text (made visible, never parsed),
    (text, style) pairs are ours. E.g. ``styled(("error:", "red"), " ", message)``."""
    text = Text()
    for part in parts:
        if isinstance(part, tuple):
            text.append(part[0], style=part[1])
        else:
            text.append(visible(part))
    return text


class UserConsole(Console):
    """A rich Console whose strings are printed as they are: no markup, no emoji codes, no highlighting, and
    control and bidi characters made visible (``visible``). Styled output is built with ``styled``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs["markup"] = False
        kwargs["emoji"] = False
        kwargs.setdefault("highlight", False)
        super().print(*(visible(o) if isinstance(o, str) else o for o in objects), **kwargs)
