"""Progress of long work on the command line: a bar per member and per suite entry on a
terminal, one line per member or entry otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from richrep.cli.common import console, say
from richrep.report.text import show


class Ticker:
    """Progress of the run: a bar per member and per suite entry on a terminal; otherwise one
    line per member or entry when it starts and when it ends, in order."""

    def __init__(self, bar: Progress | None) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}
        self.state: dict[str, tuple[int, int]] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if self.bar is not None:
            if name not in self.tasks:
                self.tasks[name] = self.bar.add_task(show(name), total=total)
            self.bar.update(self.tasks[name], completed=done, total=total)
            return
        if name.startswith("eval "):
            return  # the evaluate stage logs one line per suite entry
        before = self.state.get(name)
        self.state[name] = (done, total)
        if done >= total and (before is None or before[0] < total):
            say(f"{name}: trained")

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(Text(show(message, keep="\n")), soft_wrap=True)
        else:
            say(message)


@contextlib.contextmanager
def progress_bar() -> Iterator[Ticker]:
    if not console.is_terminal:
        yield Ticker(None)
        return
    bar = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with bar:
        yield Ticker(bar)
