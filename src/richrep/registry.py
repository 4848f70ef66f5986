"""Small decorator registries (one per kind: datasets, shifts, encoders, protocols, measures).

A plug-in is one function and one decorator::

    @SHIFTS.register("gaussian_noise")
    def gaussian_noise(task: Task, severity: int = 3) -> Task: ...

Arguments are validated with pydantic from the function's annotations, so a bad value gets
an error naming the entry, the argument and what was expected.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from richrep.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    summary: str
    skip: int  # leading positional arguments supplied by richrep (e.g. the task), not the user

    def params(self) -> list[inspect.Parameter]:
        return list(inspect.signature(self.fn).parameters.values())[self.skip :]

    def signature(self) -> str:
        parts = []
        for p in self.params():
            parts.append(
                p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            )
        return f"{self.name}({', '.join(parts)})"


class Registry(Generic[F]):
    """A named mapping from string to callable, filled by :meth:`register`."""

    def __init__(self, kind: str, skip: int = 0) -> None:
        self.kind = kind
        self.skip = skip
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            doc = inspect.getdoc(fn) or ""
            self._entries[key] = Entry(key, fn, doc.split("\n\n")[0].replace("\n", " "), self.skip)
            return fn

        return deco

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[n] for n in self.names())

    def entry(self, name: str, where: str = "") -> Entry[F]:
        if name not in self._entries:
            at = f"{where}: " if where else ""
            raise ConfigError(
                f"{at}unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def validate(self, name: str, params: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """Check ``params`` against the entry's signature; return them coerced and completed."""
        entry = self.entry(name, where)
        at = f"{where}: " if where else ""
        accepted = {p.name: p for p in entry.params()}
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{at}{self.kind} {name!r} has no argument {', '.join(map(repr, unknown))}; "
                f"it takes {entry.signature()}"
            )
        out: dict[str, Any] = {}
        for pname, p in accepted.items():
            if pname not in params:
                if p.default is inspect.Parameter.empty:
                    raise ConfigError(
                        f"{at}{self.kind} {name!r} needs argument {pname!r}: {entry.signature()}"
                    )
                out[pname] = p.default
                continue
            ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
            try:
                out[pname] = pydantic.TypeAdapter(_resolve(entry.fn, pname, ann)).validate_python(
                    params[pname], strict=False
                )
            except pydantic.ValidationError as e:
                msg = "; ".join(err["msg"] for err in e.errors())
                raise ConfigError(
                    f"{at}{self.kind} {name!r} argument {pname!r}={params[pname]!r} is invalid: {msg}"
                ) from None
        return out

    def build(self, name: str, *args: Any, where: str = "", **params: Any) -> Any:
        return self._entries[name].fn(*args, **self.validate(name, params, where))


def _resolve(fn: Callable[..., Any], pname: str, ann: Any) -> Any:
    if isinstance(ann, str):  # postponed annotations
        import typing

        hints = typing.get_type_hints(fn, include_extras=True)
        return hints.get(pname, Any)
    return ann
