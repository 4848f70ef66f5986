"""Small decorator registries: one per axis of variation (datasets, shifts, encoders,
objectives, member kinds, probes, protocols, floors, engines, measures).

A plug-in is one function (or class) and one decorator::

    @SHIFTS.register("gaussian_noise")
    def gaussian_noise(task: Task, severity: int = 3) -> Task: ...

Arguments are validated with pydantic from the entry's signature (a class: its ``__init__``),
so a bad value gets an error naming the entry, the argument and what was expected, and an
unknown name gets the choices and a "did you mean". An entry may carry display metadata
(``label``, ``order``, ``marker``, ``color``, ``description``, ``metrics``…) for the tables,
plots and report, so a new entry needs no edit anywhere else (timm's model registry has the
same shape).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import importlib.util
import inspect
import pkgutil
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic

from richrep.errors import ConfigError, RegistryError

F = TypeVar("F", bound=Callable[..., Any])
BROKEN_PLUGINS: list[str] = []  # one line per plug-in that failed to load (load_plugins)


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    summary: str
    skip: int  # leading positional arguments supplied by richrep (e.g. the task), not the user
    meta: Mapping[str, Any] = field(default_factory=dict)

    def _callable(self) -> Callable[..., Any]:
        return self.fn.__init__ if inspect.isclass(self.fn) else self.fn  # type: ignore[misc]

    def params(self) -> list[inspect.Parameter]:
        ps = list(inspect.signature(self._callable()).parameters.values())
        if inspect.isclass(self.fn):
            ps = ps[1:]  # self
        return [
            p
            for p in ps[self.skip :]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and not p.name.startswith("_")
        ]

    def signature(self) -> str:
        parts = [
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in self.params()
        ]
        return f"{self.name}({', '.join(parts)})"


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


CATALOGUE: dict[str, Registry[Any]] = {}  # plural kind (as `richrep list` spells it) -> registry


class Registry(Generic[F]):
    """A named mapping from string to callable, filled by :meth:`register`. Every registry
    enters :data:`CATALOGUE` under its plural name when it is created.

    ``filled`` names arguments the caller supplies when a spec leaves them unset (a probe's
    ``random_state`` and ``device``: the run's seed and device): :meth:`validate` does not
    write their defaults into a spec, and reads a value equal to the default as unset (so a
    stored spec that had the default written out keeps meaning "unset")."""

    def __init__(
        self,
        kind: str,
        skip: int = 0,
        plural: str | None = None,
        filled: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.skip = skip
        self.filled = filled
        self._entries: dict[str, Entry[F]] = {}
        CATALOGUE[plural or kind + "s"] = self

    def register(self, name: str | None = None, **meta: Any) -> Callable[[F], F]:
        """Register the decorated function or class as ``name`` (default: its ``__name__``)
        with display metadata ``meta``."""

        def deco(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                was = self._entries[key].fn
                raise RegistryError(
                    f"{self.kind} {key!r} is registered twice: {_where(fn)} registers the name "
                    f"{_where(was)} already has"
                )
            doc = inspect.getdoc(fn) or ""
            summary = doc.split("\n\n")[0].replace("\n", " ").replace("``", "")
            self._entries[key] = Entry(key, fn, summary, self.skip, dict(meta))
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive sessions that re-register)."""
        self._entries.pop(name, None)

    def _loaded(self) -> dict[str, Entry[F]]:
        """The entries, every plug-in imported first (once): a registry is complete whichever
        module reads it first."""
        load_plugins()
        return self._entries

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._loaded() if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[n] for n in self.names())

    def entry(self, name: str, where: str = "") -> Entry[F]:
        if name not in self._loaded():
            at = f"{where}: " if where else ""
            broken = "".join(f"; {b}" for b in BROKEN_PLUGINS)
            raise ConfigError(
                f"{at}unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"choose one of: {', '.join(self.names())}{broken}"
            )
        return self._entries[name]

    def meta(self, name: str, key: str, default: Any = None) -> Any:
        e = self._loaded().get(name)
        return default if e is None else e.meta.get(key, default)

    def validate(self, name: str, params: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """Check ``params`` against the entry's signature; return them coerced and completed
        (arguments in ``filled`` only when set to something other than their default)."""
        entry = self.entry(name, where)
        at = f"{where}: " if where else ""
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"{at}arguments of {self.kind} {name!r} must be a mapping like {{arg: value}}, "
                f"got {params!r}"
            )
        accepted = {p.name: p for p in entry.params()}
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            hint = did_you_mean(unknown[0], list(accepted))
            raise ConfigError(
                f"{at}{self.kind} {name!r} has no argument {', '.join(map(repr, unknown))}"
                f"{hint}; it takes {entry.signature()}"
            )
        out: dict[str, Any] = {}
        for pname, p in accepted.items():
            if pname not in params:
                if pname in self.filled and p.default is not inspect.Parameter.empty:
                    continue
                if p.default is inspect.Parameter.empty:
                    raise ConfigError(
                        f"{at}{self.kind} {name!r} needs argument {pname!r}: {entry.signature()}"
                    )
                out[pname] = p.default
                continue
            out[pname] = checked(entry._callable(), p, params[pname], f"{at}{self.kind} {name!r}")
            if pname in self.filled and out[pname] == p.default:
                del out[pname]  # the default written out reads as unset
        return out

    def build(self, name: str, *args: Any, where: str = "", **params: Any) -> Any:
        return self._entries[name].fn(*args, **self.validate(name, params, where))


def _where(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)!s}"


def checked(fn: Callable[..., Any], p: inspect.Parameter, value: Any, who: str) -> Any:
    """``value`` of ``fn``'s parameter ``p`` validated (and coerced) by pydantic against its
    annotation, constraints included; a :class:`ConfigError` naming ``who`` and the argument."""
    try:
        return _adapter(fn, p.name).validate_python(value, strict=False)
    except pydantic.ValidationError as e:
        msg = "; ".join(err["msg"] for err in e.errors())
        raise ConfigError(f"{who} argument {p.name!r}={value!r} is invalid: {msg}") from None


def check_arguments(cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (e.g. an estimator's ``get_params()``) validated against the annotations of
    ``cls.__init__``, as :meth:`Registry.validate` does when an experiment is read: what an
    estimator's ``fit`` checks (scikit-learn's convention: ``__init__`` only stores), so one
    built in Python meets the constraints its registry entry enforces."""
    ps = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return {
        k: checked(cls.__init__, ps[k], v, cls.__name__)  # type: ignore[misc]
        for k, v in params.items()
        if k in ps
    }


@functools.cache
def _adapter(fn: Callable[..., Any], pname: str) -> pydantic.TypeAdapter[Any]:
    ann = inspect.signature(fn).parameters[pname].annotation
    if ann is inspect.Parameter.empty:
        ann = Any
    elif isinstance(ann, str):  # postponed annotations
        ann = typing.get_type_hints(fn, include_extras=True).get(pname, Any)
    return pydantic.TypeAdapter(ann)


# Packages whose modules register built-in plug-ins: every module in them is imported once by
# load_plugins, so a new built-in is one file and one registration (no list to edit).
PLUGIN_PACKAGES = (
    "richrep.data",
    "richrep.models",
    "richrep.objectives",
    "richrep.members",
    "richrep.evaluation",
    "richrep.representations",
    "richrep.training.engines",
    "richrep.analysis",
    "richrep.report.figures",
    "richrep.stages.trackers",
)
_LOADED = [False]


def load_plugins() -> None:
    """Import the built-in plug-in modules and those of installed packages (entry-point group
    ``richrep.plugins``); each registers its entries on import. Idempotent. A plug-in that
    fails to import, or registers a name richrep or an earlier plug-in has, is left out with
    a warning naming it and its package (what it registered is removed): an experiment that
    needs it fails where it names it."""
    if _LOADED[0]:
        return
    _LOADED[0] = True  # before the imports: a module that reads a registry does not recurse
    try:
        for name in builtin_modules():
            importlib.import_module(name)
    except BaseException:
        _LOADED[0] = False  # never leave half the built-ins loaded and call it done
        raise
    from importlib.metadata import entry_points

    for ep in entry_points(group="richrep.plugins"):
        _load_plugin(ep)


def _load_plugin(ep: Any) -> None:
    before = {kind: set(r._entries) for kind, r in CATALOGUE.items()}
    try:
        ep.load()
    except Exception as e:  # noqa: BLE001 - any failure of a third-party import is reported
        for kind, r in CATALOGUE.items():
            for name in set(r._entries) - before.get(kind, set()):
                r.unregister(name)
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown package"
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        line = f"plug-in {ep.name!r} ({ep.value}, from {dist}) was not loaded: {why}"
        BROKEN_PLUGINS.append(line)
        warnings.warn(f"{line}; going on without it", RuntimeWarning, stacklevel=3)


def builtin_modules() -> list[str]:
    """Every module of :data:`PLUGIN_PACKAGES` (found on disk, imported by nobody here)."""
    out = []
    for package in PLUGIN_PACKAGES:
        spec = importlib.util.find_spec(package)
        paths = spec.submodule_search_locations if spec else None
        out.append(package)
        out += [m.name for m in pkgutil.walk_packages(paths or [], package + ".")]
    return out
