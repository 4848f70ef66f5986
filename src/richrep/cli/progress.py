"""Progress of long work on the command line, weighted by work (training steps, probe fits,
episodes, fine-tuning steps: what each stage and protocol counts) rather than by members or
representations.

On a terminal: an overall line (elapsed, and an ETA from each task's own pace) above a bar per
member and per suite entry; a member's bar shows its epoch and last epoch's loss. Otherwise
(piped, CI, nohup): a line when a task starts, at most one a minute per task while it runs and
one a minute overall, and one when a member finishes — never a flood."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Task as BarTask
from rich.text import Text

from richrep.cli.common import console, say, warning
from richrep.report.text import show
from richrep.stages.evaluate import EVAL_PREFIX

EVERY = 60.0  # seconds between two lines of one task when not on a terminal
Clock = Callable[[], float]


def clock_time(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class Throttle:
    """At most one line per ``every`` seconds for each key, the first ``every`` seconds
    after the key is first asked about (or :meth:`reset`)."""

    def __init__(self, every: float = EVERY, clock: Clock = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.last: dict[str, float] = {}

    def reset(self, key: str) -> None:
        """A line for ``key`` was just written."""
        self.last[key] = self.clock()

    def due(self, key: str) -> bool:
        now = self.clock()
        last = self.last.setdefault(key, now)
        if now - last >= self.every:
            self.last[key] = now
            return True
        return False


@dataclass
class Task:
    """One member or suite entry: its units of work done and to do, and since when."""

    name: str
    total: int
    unit: str = ""
    done: int = 0
    base: int = 0  # done when its work began (a resumed member's finished epochs)
    began: float | None = None  # when it last reported ``base``: its work starts there
    ended: float | None = None
    ran: bool = False  # seen with work left (a reused member never is)
    planned: int | None = None  # the total a stage planned
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return "eval" if self.name.startswith(EVAL_PREFIX) else "train"

    def pace(self, now: float) -> tuple[float, int] | None:
        """(seconds, units) of work measured so far, if any unit was done."""
        if self.began is None or self.done <= self.base:
            return None
        end = now if self.ended is None else self.ended
        return end - self.began, self.done - self.base

    def count(self) -> str:
        return f"{self.done}/{self.total}{' ' + self.unit if self.unit else ''}"

    def detail(self) -> str:
        """A member's epoch and last loss ("" before its first epoch ends)."""
        i = self.info
        if "epoch" not in i:
            return ""
        loss = f" · loss {i['loss']:.4g}" if i.get("loss") is not None else ""
        return f" · epoch {i['epoch']}/{i['epochs']}{loss}"


class Board:
    """The tasks of a command and the overall estimate: each unfinished task's remaining
    units at its own pace (or, before it has one, the pace of its stage's tasks of the same
    unit), divided by how many ran at once so far."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.tasks: dict[str, Task] = {}
        self.past: list[Task] = []  # earlier tasks of the same name (the runs of a sweep)
        self.planned = False  # a stage said what it will do: an overall estimate is shown

    def plan(self, name: str, total: int, unit: str) -> Task:
        self.planned = True
        t = self.tasks.get(name)
        if t is None or t.ended is not None:
            t = self._new(name, total, unit)
        t.total, t.planned, t.unit = total, total, unit
        return t

    def update(self, name: str, done: int, total: int) -> Task:
        now = self.clock()
        t = self.tasks.get(name)
        if t is None or (t.ended is not None and done < t.done):
            t = self._new(name, total, t.unit if t else "")
        if done >= total and t.began is None and t.planned is not None:
            done = total = t.planned  # an engine that only says "done" (Ray): the plan's units
        if t.began is None or done < t.done or done == t.done == t.base:
            t.base, t.began = done, now  # its work (re)starts here
        t.done, t.total = done, total
        if done < total:
            t.ran, t.ended = True, None
        elif t.ended is None:
            t.ended = now
        return t

    def _new(self, name: str, total: int, unit: str) -> Task:
        if name in self.tasks:
            self.past.append(self.tasks[name])
        self.tasks[name] = Task(name, total, unit)
        return self.tasks[name]

    def eta(self) -> tuple[float | None, bool]:
        """Seconds left (None: no pace known yet) and whether some unfinished task has no
        pace to go by (the estimate is then a lower bound)."""
        now = self.clock()
        paces: dict[tuple[str, str], list[float]] = {}
        busy, first = 0.0, None
        for t in (*self.past, *self.tasks.values()):
            p = t.pace(now)
            if p is not None and t.began is not None:
                acc = paces.setdefault((t.stage, t.unit), [0.0, 0])
                acc[0], acc[1] = acc[0] + p[0], acc[1] + p[1]
                busy += p[0]
                first = t.began if first is None else min(first, t.began)
        left, unknown = 0.0, False
        for t in self.tasks.values():
            if t.done >= t.total:
                continue
            p = t.pace(now) or paces.get((t.stage, t.unit))
            if p is None:
                unknown = True
                continue
            left += (t.total - t.done) * p[0] / p[1]
        if first is None:
            return None, True
        together = busy / (now - first) if now > first else 1.0
        return left / max(together, 1e-6), unknown

    def stages(self) -> str:
        """Tasks finished per stage, e.g. ``train 2/2 · eval 1/4``."""
        out: dict[str, list[int]] = {}
        for t in self.tasks.values():
            if t.ran or t.done < t.total:
                n = out.setdefault(t.stage, [0, 0])
                n[0] += t.done >= t.total
                n[1] += 1
        return " · ".join(f"{s} {a}/{b}" for s, (a, b) in out.items())

    def overall(self) -> str:
        eta, partial = self.eta()
        left = "?" if eta is None else clock_time(eta) + ("+" if partial else "")
        return f"elapsed {clock_time(self.clock() - self.start)}, ETA {left}"


class Remaining(ProgressColumn):
    """The ETA a task carries (the overall line's), else Rich's from the task's speed."""

    def __init__(self) -> None:
        super().__init__()
        self.rich = TimeRemainingColumn()

    def render(self, task: BarTask) -> Text:
        eta = task.fields.get("eta")
        return Text(eta, style="progress.remaining") if eta else self.rich.render(task)


class Ticker:
    """The progress receiver of a command (``progress(task, done, total)`` with ``plan`` and
    ``note``, see :mod:`richrep.runtime.progress`), drawn as bars on a terminal (``bar``) or
    written as sparse lines (``write``)."""

    def __init__(
        self,
        bar: Progress | None,
        *,
        clock: Clock = time.monotonic,
        every: float = EVERY,
        write: Callable[[str], None] = say,
    ) -> None:
        self.bar, self.write = bar, write
        self.board = Board(clock)
        self.throttle = Throttle(every, clock)
        self.lock = threading.RLock()
        self.ids: dict[str, Any] = {}
        self.started: set[str] = set()
        self.top: Any = None
        self.refreshed = float("-inf")

    def __call__(self, name: str, done: int, total: int) -> None:
        with self.lock:
            before = self.board.tasks.get(name)
            was = (before.done, before.ran, before.ended) if before else None
            t = self.board.update(name, done, total)
            if self.bar is not None:
                self._draw(t)
            else:
                self._lines(t, was)

    def plan(self, name: str, total: int, unit: str) -> None:
        with self.lock:
            t = self.board.plan(name, total, unit)
            if self.bar is not None:
                self._draw(t)

    def note(self, name: str, **info: Any) -> None:
        with self.lock:
            t = self.board.tasks.get(name)
            if t is not None:
                t.info.update(info)
                if self.bar is not None and name in self.ids:
                    self.bar.update(self.ids[name], description=show(name + t.detail()))

    def log(self, message: str) -> None:
        if message.startswith("WARNING: "):  # a stage's warning: one line, once
            warning(message.removeprefix("WARNING: "))
        elif self.bar is not None:
            self.bar.console.print(Text(show(message, keep="\n")), soft_wrap=True)
        else:
            self.write(message)

    # -- a terminal ---------------------------------------------------------------------------
    def _draw(self, t: Task) -> None:
        bar = self.bar
        assert bar is not None
        if t.name not in self.ids:
            if not t.ran and t.began is not None:
                return  # finished before this command (a reused member): no bar
            if self.top is None and self.board.planned:
                self.top = bar.add_task("overall", total=None, count="", eta="?")
            self.ids[t.name] = bar.add_task(
                show(t.name + t.detail()), total=t.total, start=False, count=t.count(), eta=""
            )
        tid = self.ids[t.name]
        if t.began is not None and t.name not in self.started:
            self.started.add(t.name)
            bar.start_task(tid)
        bar.update(tid, completed=t.done, total=t.total, count=t.count())
        now = self.board.clock()
        if self.top is not None and (now - self.refreshed >= 0.5 or t.ended is not None):
            self.refreshed = now
            eta, partial = self.board.eta()
            elapsed = now - self.board.start
            left = "?" if eta is None else clock_time(eta) + ("+" if partial else "")
            total = None if eta is None else elapsed + eta
            bar.update(
                self.top, completed=elapsed, total=total, count=self.board.stages(), eta=left
            )

    # -- not a terminal -----------------------------------------------------------------------
    def _lines(self, t: Task, was: tuple[int, bool, float | None] | None) -> None:
        unit = f" {t.unit}" if t.unit else ""
        if t.done < t.total and (was is None or not was[1] or was[2] is not None):
            start = f"resumed at {t.done}/{t.total}{unit}" if t.done else f"{t.total}{unit}"
            self.write(f"{t.name}: started ({start})")
            self.throttle.reset(t.name)
        elif t.ended is not None and t.ran and (was is None or was[2] is None):
            if t.stage != "eval":  # the evaluate stage writes an entry's last line itself
                secs = t.ended - (t.ended if t.began is None else t.began)
                self.write(f"{t.name}: done ({t.total}{unit} in {secs:.1f} s{t.detail()})")
        elif t.done < t.total and self.throttle.due(t.name):
            p = t.pace(self.board.clock())
            eta = clock_time((t.total - t.done) * p[0] / p[1]) if p else "?"
            pct = 100 * t.done / max(t.total, 1)
            self.write(f"{t.name}: {t.count()} ({pct:.0f} %){t.detail()}, ETA {eta}")
        if self.board.planned and self.throttle.due("overall"):
            self.write(f"overall ({self.board.stages()}): {self.board.overall()}")


@contextlib.contextmanager
def progress_bar() -> Iterator[Ticker]:
    if not console.is_terminal:
        yield Ticker(None)
        return
    bar = Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        Remaining(),
        console=console,
        transient=False,
    )
    with bar:
        yield Ticker(bar)
