"""Printing untrusted text (experiment names, error messages, result rows) safely.

:func:`strip_control` removes terminal escape sequences (CSI ``ESC [``, OSC ``ESC ]`` such as
window titles and hyperlinks, DCS/SOS/PM/APC strings, two-byte escapes, their 8-bit C1 forms),
the remaining control characters (C0, DEL, C1) and the bidirectional overrides that make text
display in another order than it reads; :func:`escape_markup` keeps ``[...]`` from being read
as Rich markup; :func:`show` does both for one value.
"""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape

_ST = r"(?:\x07|\x1b\\|\x9c)"  # string terminator: BEL, ESC \ or 8-bit ST
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    rf"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:{_ST}|$)"  # OSC/DCS/SOS/PM/APC
    r"|\x1b[ -/]*[0-~]"  # other escapes: ESC (intermediates) final
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_control(s: str, keep: str = "") -> str:
    """``s`` without terminal escape sequences and control characters; the control characters
    in ``keep`` stay (``keep="\\t\\n"`` for multi-line text)."""
    s = _ESCAPES.sub("", s)
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else "", s)


def escape_markup(s: str) -> str:
    """``s`` with Rich markup escaped: ``"[bold]x"`` prints as written, ``"[/x]"`` never
    raises a markup error."""
    return escape(s)


def show(value: Any, keep: str = "") -> str:
    """``str(value)`` ready to interpolate into Rich markup: control stripped, markup escaped."""
    return escape_markup(strip_control(str(value), keep))


def clean(value: Any, keep: str = "") -> Any:
    """``value`` with :func:`strip_control` applied to every string in it, keys included,
    through dicts, lists and tuples; other values are returned as they are."""
    if isinstance(value, str):
        return strip_control(value, keep)
    if isinstance(value, dict):
        return {clean(k, keep): clean(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v, keep) for v in value]
    if isinstance(value, tuple):
        return tuple(clean(v, keep) for v in value)
    return value
