"""Suite entries given outside the experiment file: on the command line (``richrep evaluate RUN
--entry '{name: mine, dataset: npz, params: {path: mine.npz}}'``), in a suite file
(``--suite extra.yaml``: a list of entries or a mapping with ``suite:``), through
``Run.evaluate(entry, save=True)``, and kept by the run as its *extra entries*
(``extra_entries.yaml`` in the run folder, itself a suite file).

A run's entries are the experiment's suite, then its extra entries: rerunning the experiment
keeps the extras. An extra entry of the same name as a suite entry is the same entry when their
contents agree; when they differ, the experiment's entry counts (:func:`merge_suite` names the
extra it shadows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from richrep.config import (
    Experiment,
    SuiteEntry,
    TrainingConfig,
    parse_experiment,
)
from richrep.config.yamlio import load_yaml
from richrep.errors import ConfigError
from richrep.registry import did_you_mean
from richrep.store import write_atomic

NOISE = {"int", "str", "constrained-int", "function-after", "function-before"}  # pydantic's
HEADER = (
    "# The run's extra suite entries (richrep evaluate RUN --entry …): evaluated, listed and\n"
    "# reported with the experiment's own suite, and kept when the experiment is run again.\n"
)


def parse_entries(raw: Any, source: str, allow_empty: bool = False) -> list[SuiteEntry]:
    """Suite entries from parsed YAML or JSON: one entry (a mapping with ``name``), a list of
    them, a mapping with ``suite:`` or an experiment (its ``evaluation.suite``)."""
    if allow_empty and raw in (None, {}, [], {"suite": []}, {"suite": None}):
        return []
    if isinstance(raw, dict) and "name" not in raw:
        if isinstance(raw.get("evaluation"), dict):
            raw = raw["evaluation"].get("suite", [])
        elif "suite" in raw:
            raw = raw["suite"]
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(
            f"{source}: a suite entry is a mapping like {{name: mine, dataset: npz, params: "
            f"{{path: mine.npz}}}}; a suite file holds a list of them or `suite: [...]` "
            f"(got {type(raw).__name__})"
        )
    if not items:
        raise ConfigError(f"{source}: no suite entry given")
    many = isinstance(raw, list)
    entries = [
        _entry(item, f"{source} entry {i}" if many else source) for i, item in enumerate(items)
    ]
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: suite entry names must be unique; repeated: {dup}")
    return entries


def _entry(raw: dict[str, Any], where: str) -> SuiteEntry:
    try:
        return SuiteEntry.model_validate(raw)
    except pydantic.ValidationError as err:
        name = raw.get("name")
        where = f"{where} ({name})" if isinstance(name, str) else where
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"] if str(p) not in NOISE and "[" not in str(p))
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                field = str(e["loc"][-1])
                hint = did_you_mean(field, list(SuiteEntry.model_fields))
                msg = f"unknown field {field!r} (check its spelling){hint}"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join([f"invalid suite entry {where}:", *lines])) from None


def entries_from_text(text: str, source: str, allow_empty: bool = False) -> list[SuiteEntry]:
    """Entries from YAML (or JSON) text, e.g. ``--entry '{name: mine, sizes: [10, all]}'``."""
    return parse_entries(load_yaml(text, source), source, allow_empty)


def load_entries(path: str | Path, allow_empty: bool = False) -> list[SuiteEntry]:
    """The entries of a suite file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file {p} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read suite file {p}: {e}") from None
    return entries_from_text(text, str(p), allow_empty)


def gather_entries(texts: Sequence[str], files: Sequence[str | Path] = ()) -> list[SuiteEntry]:
    """The entries of ``--entry`` texts and ``--suite`` files, their names unique."""
    entries = [e for i, t in enumerate(texts) for e in entries_from_text(t, f"--entry {i + 1}")]
    entries += [e for f in files for e in load_entries(f)]
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two entries are named {dup[0]!r}: give each its own name")
    return entries


def resolve_entries(
    exp: Experiment, entries: Sequence[SuiteEntry], source: str
) -> list[SuiteEntry]:
    """``entries`` checked against the registries and completed exactly as the entries of
    ``exp``'s own suite are (so the same entry has the same results file)."""
    out = []
    for e in entries:
        alone = exp.model_dump(mode="json")
        alone["model"]["pretrained"] = None  # hashed already
        alone["training"] = TrainingConfig().model_dump(mode="json")
        alone["evaluation"] = {"suite": [e.model_dump(mode="json")]}
        try:
            out += parse_experiment(alone).evaluation.suite
        except ConfigError as err:
            raise ConfigError(
                str(err).replace("evaluation.suite[0]", f"{source} {e.name}")
            ) from None
    return out


def differences(a: SuiteEntry, b: SuiteEntry) -> str:
    """The fields in which two entries differ, with both values."""
    da, db = _flat(a.model_dump(mode="json")), _flat(b.model_dump(mode="json"))
    keys = [k for k in dict.fromkeys([*da, *db]) if da.get(k) != db.get(k)]
    return "; ".join(f"{k}: {da.get(k)!r} vs {db.get(k)!r}" for k in keys)


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """``{params: {path: p}}`` as ``{params.path: p}`` (one level)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def merge_extras(
    suite: Sequence[SuiteEntry],
    extras: Sequence[SuiteEntry],
    new: Sequence[SuiteEntry],
    *,
    replace: bool = False,
    where: str = "the run",
) -> list[SuiteEntry]:
    """The run's extra entries once ``new`` is added. An entry equal to one of the run's is
    that entry; one that differs from an extra entry of the same name replaces it only with
    ``replace``; one that differs from a suite entry of the same name is refused (the
    experiment file owns that name)."""
    out = list(extras)
    own = {e.name: e for e in suite}
    names = [n.name for n in new]
    if len(set(names)) < len(names):
        raise ConfigError(f"the new entries' names must be unique, got {names}")
    for n in new:
        if n.name in own:
            if own[n.name] != n:
                raise ConfigError(
                    f"{n.name!r} is an entry of {where}'s experiment suite, with other content "
                    f"({differences(own[n.name], n)}); give the new entry another name (the "
                    "experiment file owns this one: change it there)"
                )
            continue
        i = next((i for i, e in enumerate(out) if e.name == n.name), None)
        if i is None:
            out.append(n)
        elif out[i] != n:
            if not replace:
                raise ConfigError(
                    f"{n.name!r} is already an extra entry of {where}, with other content "
                    f"({differences(out[i], n)}); give the new entry another name, or replace "
                    "the old one (--replace; in Python, replace=True)"
                )
            out[i] = n
    return out


def merge_suite(
    suite: Sequence[SuiteEntry], extras: Sequence[SuiteEntry]
) -> tuple[list[SuiteEntry], list[SuiteEntry]]:
    """(the run's entries: the suite, then the extras it does not name; the extras that a
    suite entry of the same name but other content shadows)."""
    own = {e.name: e for e in suite}
    shadowed = [e for e in extras if e.name in own and own[e.name] != e]
    return [*suite, *(e for e in extras if e.name not in own)], shadowed


class ExtrasFile:
    """A run's ``extra_entries.yaml``: read (resolved against the run's experiment) again only
    when the file changed, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._read: tuple[Any, list[SuiteEntry]] = (None, [])

    def read(self, exp: Experiment) -> list[SuiteEntry]:
        """The extra entries (none when the file does not exist)."""
        st = self.path.stat() if self.path.exists() else None
        key = st and (st.st_ino, st.st_mtime_ns, st.st_size, exp.run_id())
        if key != self._read[0]:
            found = load_entries(self.path, allow_empty=True) if key else []
            self._read = (key, resolve_entries(exp, found, str(self.path)))
        return list(self._read[1])

    def write(self, entries: Sequence[SuiteEntry]) -> None:
        """Keep ``entries`` (a suite file, with a header saying what it is)."""
        suite = [e.model_dump(mode="json") for e in entries]
        text = HEADER + yaml.safe_dump({"suite": suite}, sort_keys=False)
        write_atomic(self.path, text.encode())


def entry_where(
    entry: SuiteEntry, suite: Sequence[SuiteEntry], extras: Sequence[SuiteEntry], store: Any
) -> str:
    """How errors name an entry: by its place in the experiment, or as an extra entry of the
    run in ``store`` (with how to drop it)."""
    if any(e.name == entry.name for e in suite):
        return f"evaluation.suite.{entry.name}"
    if any(e.name == entry.name for e in extras):
        return (
            f"extra entry {entry.name} (kept in {store.extra_entries}; "
            f"`richrep evaluate {store.root} --drop {entry.name}` removes it)"
        )
    return f"entry {entry.name}"


def kind_hint(entry: SuiteEntry, input_shape: Sequence[int]) -> str:
    """How to make an entry's arrays fit inputs of ``input_shape``, when its dataset has a
    ``kind`` (``npz``)."""
    kind = entry.params.get("kind")
    shape = f"(N, {', '.join(map(str, input_shape))})"
    if kind is None:
        return ""
    if kind != "auto":
        return (
            f"; its params set kind: {kind} (leave `kind:` out to follow the run's inputs, "
            f"or give x of shape {shape})"
        )
    return (
        f"; `kind: auto` follows the run's inputs only when x holds {shape}, singleton axes aside"
    )
