"""Untrusted text: no terminal escapes, no control characters, no Rich markup injection."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from richrep.report.text import clean, escape_markup, show, strip_control


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;title\x07name", "name"),
        ("\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink, ST-ended
        ("a\rb", "ab"),
        ("a\x08\x08b\x00c\x7f", "abc"),
        ("x\x1bPq#0;2;0;0;0\x1b\\y", "xy"),  # DCS (sixel)
        ("\x9b2Jclear", "clear"),  # 8-bit CSI
        ("\x1b7saved\x1b8", "saved"),  # two-byte escapes
        ("\x1b[?1049h\x1b[2J\x1b[Hwiped", "wiped"),
        ("tab\there\nline", "tabhereline"),
        ("abc\u202egnp.exe", "abcgnp.exe"),  # right-to-left override
        ("plain é ✓ 中文", "plain é ✓ 中文"),
        ("unterminated \x1b]0;title", "unterminated "),
        ("lone \x1b", "lone "),
    ],
)
def test_strip_control(raw, want):
    assert strip_control(raw) == want


def test_strip_control_keeps_what_is_asked():
    assert strip_control("a\tb\nc\rd\x1b[1m", keep="\t\n") == "a\tb\ncd"


def render(markup: str) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None, highlight=False).print(markup)
    return out.getvalue().rstrip("\n")


@pytest.mark.parametrize("raw", ["[/x]", "[bold]oops", "a [red]b[/red] c", "[link=x]y[/link]"])
def test_escape_markup_prints_text_as_written(raw):
    assert render(escape_markup(raw)) == raw
    assert render(f"[bold]{escape_markup(raw)}[/bold]") == raw


def test_a_trailing_backslash_cannot_escape_the_next_tag():
    assert render(f"[bold]{escape_markup('x' + chr(92))}[/bold]") == "x" + chr(92)


def test_show_strips_then_escapes():
    assert render(show("\x1b[31m[bold]run\x1b[0m")) == "[bold]run"
    assert show(3.5) == "3.5"


def test_clean_walks_rows():
    rows = [
        {"target": "\x1b[31mnew\x1b[0m", "acc": 0.5, "tags": ["a\rb", ("\x07c",)], "k": None},
        {"\x1b]0;t\x07key": {"x": "\x1b[2Jy"}},
    ]
    assert clean(rows) == [
        {"target": "new", "acc": 0.5, "tags": ["ab", ("c",)], "k": None},
        {"key": {"x": "y"}},
    ]
    assert rows[0]["target"].startswith("\x1b")  # the input is not modified
