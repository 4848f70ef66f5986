"""What every command shares: the consoles, printing untrusted text, one clean line for
richrep's own errors and for an interrupt, and each warning once, on one line."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from richrep.errors import RichrepError
from richrep.report.text import show

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)
INTERRUPTED = "interrupted; run the same command again to resume"


def say(message: object, style: str | None = None, to: Console | None = None) -> None:
    """Print untrusted text: never parsed as markup, control characters stripped."""
    (to or console).print(Text(show(message, keep="\n"), style=style or ""), soft_wrap=True)


def fail(e: BaseException, code: int = 2) -> None:
    err.print(Text("error: ", style="bold red") + Text(show(e, keep="\n")), soft_wrap=True)
    raise typer.Exit(code)


_shown: set[str] = set()  # the warnings printed by the current command
_shown_lock = threading.Lock()


def warning(message: object) -> None:
    """Print ``message`` as one ``warning:`` line, unless this command printed it already."""
    text = show(message, keep="\n")
    with _shown_lock:
        if text in _shown:
            return
        _shown.add(text)
    err.print(Text("warning: ", style="yellow") + Text(text), soft_wrap=True)


def _warn(message: Any, *args: Any, **kwargs: Any) -> None:
    """``warnings.showwarning`` within a command: the message alone (no file, line or source
    line), once."""
    warning(message)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """richrep's own errors as one clean line (exit 2); Ctrl-C or SIGTERM as one line saying
    how to resume (exit 130); warnings as one line each, each message once."""
    previous = signal.getsignal(signal.SIGTERM)
    shown, warnings.showwarning = warnings.showwarning, _warn
    with _shown_lock:
        _shown.clear()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except RichrepError as e:
        fail(e)
    except KeyboardInterrupt:
        err.print(Text(INTERRUPTED, style="yellow"))
        raise typer.Exit(130) from None
    finally:
        warnings.showwarning = shown
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


def guarded(command: Any) -> Any:
    """``command`` run inside :func:`guard` (its signature kept for Typer)."""

    @functools.wraps(command)
    def run_guarded(*args: Any, **kwargs: Any) -> Any:
        with guard():
            return command(*args, **kwargs)

    return run_guarded
