"""Command-line overrides of an experiment, in Hydra's grammar, and the sweep grammar.

``KEY=VALUE`` sets a key, ``+KEY=VALUE`` adds one the file does not have, ``++KEY=VALUE`` sets
or adds, ``~KEY`` (or ``~KEY=VALUE``: only if it has that value) deletes one. ``KEY`` is a
dotted path into the experiment mapping: ``training.epochs``, ``model.params.hidden``; an item
of a list by its index or, for lists of named items, its name (``evaluation.suite.0.sizes``,
``evaluation.suite.new.sizes``). ``VALUE`` is read as YAML with the project's safe loader
(``3``, ``mlp``, ``[256, 256]``, ``{keep: [0, 1]}``, ``null``, ``true``; empty: ``""``).

The overrides change the raw mapping before validation, so their errors are the file's, and
the result changes the run identity exactly as editing the file would (``runtime.*`` is outside
it). A key the schema does not know is refused with a "did you mean", naming the override.

A sweep axis ``KEY=V1,V2,...`` splits its values at the commas outside brackets, braces and
quotes (``model.params.hidden=[64],[128,128]`` is two values); each value is read as YAML.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

from richrep.config import Experiment, parse_experiment
from richrep.config.yamlio import load_yaml
from richrep.errors import ConfigError
from richrep.registry import did_you_mean

Op = Literal["set", "add", "force", "delete"]
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*")
_PREFIX: dict[str, Op] = {"++": "force", "+": "add", "~": "delete"}
FLOW_OPEN, FLOW_CLOSE = "[{", "]}"


@dataclass(frozen=True)
class Override:
    """One parsed override: ``op`` on the dotted ``path`` with ``value`` (``has_value``:
    whether it was given, for ``~KEY=VALUE``); ``text`` as written."""

    text: str
    op: Op
    path: tuple[str, ...]
    value: Any = None
    has_value: bool = True

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _split_key(text: str, what: str = "override") -> tuple[Op, str, str | None]:
    """``(op, key, value text or None)`` of ``[+|++|~]KEY[=VALUE]``."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} {text!r} must be a string KEY=VALUE")
    op: Op = "set"
    body = text
    for prefix, name in _PREFIX.items():
        if text.startswith(prefix):
            op, body = name, text[len(prefix) :]
            break
    key, eq, value = body.partition("=")
    if not eq and op != "delete":
        raise ConfigError(
            f"{what} {text!r} is not KEY=VALUE (e.g. training.epochs=3; ~KEY deletes a key)"
        )
    if not _KEY.fullmatch(key):
        raise ConfigError(
            f"{what} {text!r}: {key!r} is not a dotted key (letters, digits, _ and -, "
            f"separated by dots, e.g. model.params.hidden)"
        )
    return op, key, value if eq else None


def parse_value(text: str, source: str) -> Any:
    """A value written on the command line, read as YAML (empty: the empty string)."""
    if text == "":
        return ""
    return load_yaml(text, source)


def parse_override(text: str) -> Override:
    """Parse ``[+|++|~]KEY[=VALUE]`` (the value as YAML); a ConfigError names the override."""
    op, key, value = _split_key(text)
    parsed = None if value is None else parse_value(value, f"override {text!r}")
    return Override(text, op, tuple(key.split(".")), parsed, value is not None)


def format_value(value: Any) -> str:
    """``value`` as an override writes it (YAML flow style, on one line)."""
    out = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False)
    return out.removesuffix("\n").removesuffix("\n...").strip()


def split_values(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, braces and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in FLOW_OPEN:
            depth += 1
        elif ch in FLOW_CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


@dataclass(frozen=True)
class Axis:
    """One sweep axis: ``KEY`` (with its ``+``/``++`` prefix, if any) and its values."""

    prefix: str
    key: str
    values: tuple[Any, ...]

    def override(self, value: Any) -> str:
        return f"{self.prefix}{self.key}={format_value(value)}"


def axis(key: str, values: Sequence[Any], text: str = "") -> Axis:
    """A sweep axis of ``values`` (Python values) for ``[+|++]KEY``; refuses an empty axis and a
    value given twice."""
    what = f"sweep {text or key!r}"
    if not isinstance(key, str) or "=" in key:
        raise ConfigError(f"{what}: the key must be a dotted key without '=' (e.g. training.seeds)")
    op, bare, _ = _split_key(f"{key}=", "sweep")
    if op == "delete":
        raise ConfigError(f"{what}: a sweep sets a key; ~KEY deletes one (use it as an override)")
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{what}: give a list of values to sweep over, got {values!r}")
    values = list(values)
    if not values:
        raise ConfigError(f"{what}: no values to sweep over")
    seen: list[str] = []
    for v in values:
        if format_value(v) in seen:
            raise ConfigError(f"{what}: the value {format_value(v)} is given twice")
        seen.append(format_value(v))
    return Axis(key[: len(key) - len(key.lstrip("+"))], bare, tuple(values))


def parse_axis(text: str) -> Axis:
    """``[+|++]KEY=V1,V2,...`` (see the module docstring)."""
    if not isinstance(text, str) or "=" not in text or text.startswith("~"):
        raise ConfigError(f"sweep {text!r} is not KEY=V1,V2,... (e.g. training.seeds=2,3)")
    _, key, value = _split_key(text, "sweep")
    pieces = split_values(value or "")
    if any(p.strip() == "" for p in pieces):
        raise ConfigError(
            f"sweep {text!r}: an empty value between commas (write '' for the empty string)"
        )
    values = [parse_value(p, f"sweep {text!r}") for p in pieces]
    prefix = text[: len(text) - len(text.lstrip("+"))]
    return axis(f"{prefix}{key}", values, text)


# -- the schema ------------------------------------------------------------------------------


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_in(a))), None)


def _checked(model: type[BaseModel] | None) -> type[BaseModel] | None:
    """``model`` if its keys are exactly its fields (no short forms read before validation:
    a spec ``name`` or ``{name: {...}}``, a baseline's arguments beside ``kind``)."""
    if model is None or model.model_config.get("extra") != "forbid":
        return None
    before = model.__pydantic_decorators__.model_validators.values()
    reshapes = any(d.info.mode == "before" for d in before)
    return model if model is Experiment or not reshapes else None


def _field(schema: Any, key: str) -> Any:
    """The annotation of field ``key`` of the model ``schema`` names (None: unknown)."""
    model = _checked(_model_in(schema))
    field = model.model_fields.get(key) if model is not None else None
    return field.annotation if field is not None else None


def _item(schema: Any) -> Any:
    """The annotation of a list's items (None: unknown)."""
    for a in (schema, *get_args(schema)):
        args = get_args(a)
        if get_origin(a) is list and args:
            return args[0]
    return None


# -- applying --------------------------------------------------------------------------------


def _unknown(o: Override, where: str, key: str, fields: list[str]) -> ConfigError:
    hint = did_you_mean(key, fields)
    inside = f"in {where}" if where else "at the top level"
    return ConfigError(
        f"override {o.text!r}: unknown key {key!r} {inside}{hint}; "
        f"the keys there are {sorted(fields)}"
    )


def _not_mapping(o: Override, where: str, node: Any) -> ConfigError:
    return ConfigError(
        f"override {o.text!r}: {where} is {node!r}, not a mapping; set it whole ({where}=VALUE)"
    )


def _index(o: Override, node: list[Any], key: str, where: str, extend: bool) -> int:
    """The position in the list ``node`` that ``key`` (an index or an item's name) names."""
    if key.isdigit():
        i = int(key)
        if i < len(node) or (extend and i == len(node)):
            return i
        room = f"0 to {len(node) - 1}" if node else "none: it is empty"
        raise ConfigError(f"override {o.text!r}: {where} has no item {i} (items: {room})")
    names = [x.get("name") for x in node if isinstance(x, dict)]
    if key in names:
        return names.index(key)
    known = [str(n) for n in names if n is not None]
    raise ConfigError(
        f"override {o.text!r}: {where} has no item named {key!r}{did_you_mean(key, known)}; "
        f"items are named {known} (or give an index, 0 to {len(node) - 1})"
    )


def _step(o: Override, node: Any, schema: Any, key: str, where: str) -> tuple[Any, Any, str]:
    """Go one key deeper: the child node (created when the schema says it is a mapping),
    its schema and its resolved dotted path."""
    path = f"{where}.{key}" if where else key
    if isinstance(node, list):
        i = _index(o, node, key, where, extend=False)
        return node[i], _item(schema), f"{where}.{i}"
    if not isinstance(node, dict):
        raise _not_mapping(o, where, node)
    child = _field(schema, key)
    model = _checked(_model_in(schema))
    if model is not None and child is None and key not in node:
        raise _unknown(o, where, key, list(model.model_fields))
    if node.get(key) is None:
        if o.op == "delete":
            raise ConfigError(f"override {o.text!r}: the experiment has no {path} to delete from")
        if _item(child) is not None:
            raise ConfigError(f"override {o.text!r}: {path} is an empty list")
        node[key] = {}
    return node[key], child, path


def _assign(o: Override, node: Any, schema: Any, key: str, where: str) -> str:
    """Apply ``o`` to ``node[key]``; return the resolved dotted path."""
    path = f"{where}.{key}" if where else key
    if isinstance(node, list):
        i = _index(o, node, key, where, extend=o.op in ("add", "force"))
        path = f"{where}.{i}"
        present, slot = i < len(node), i
    elif isinstance(node, dict):
        model = _checked(_model_in(schema))
        if model is not None and key not in model.model_fields and key not in node:
            raise _unknown(o, where, key, list(model.model_fields))
        present, slot = key in node, key
    else:
        raise _not_mapping(o, where, node)
    if o.op == "add" and present:
        raise ConfigError(
            f"override {o.text!r}: {path} is already in the experiment; "
            f"set it with {o.key}=VALUE (or ++{o.key}=VALUE)"
        )
    if o.op == "delete":
        if not present:
            raise ConfigError(f"override {o.text!r}: the experiment has no {path} to delete")
        if o.has_value and node[slot] != o.value:
            raise ConfigError(
                f"override {o.text!r}: {path} is {node[slot]!r}, not {o.value!r}; not deleted"
            )
        del node[slot]
    elif isinstance(node, list) and not present:
        node.append(copy.deepcopy(o.value))
    else:
        node[slot] = copy.deepcopy(o.value)
    return path


def apply_overrides(raw: Any, overrides: Sequence[str | Override]) -> tuple[Any, list[str]]:
    """A copy of the mapping ``raw`` with ``overrides`` applied in order, and each override's
    resolved dotted path (list items by index)."""
    ops = [o if isinstance(o, Override) else parse_override(o) for o in overrides]
    if not ops:
        return raw, []
    if not isinstance(raw, dict):
        raise ConfigError(f"overrides apply to a mapping, got {type(raw).__name__}")
    out = copy.deepcopy(raw)
    paths = []
    for o in ops:
        node, schema, where = out, Experiment, ""
        for key in o.path[:-1]:
            node, schema, where = _step(o, node, schema, key, where)
        paths.append(_assign(o, node, schema, o.path[-1], where))
    return out, paths


def _blamed(message: str, ops: Sequence[Override], paths: Sequence[str]) -> list[str]:
    """The overrides whose key the validation ``message`` names (or a key inside, or above)."""
    text = re.sub(r"\[(\d+)\]", r".\1", message)
    locs: set[str] = set()
    for token in re.findall(r"[A-Za-z_][A-Za-z0-9_-]*(?:[./][A-Za-z0-9_-]+)+", text):
        head, _, tail = token.partition("/")
        locs.add(head)
        if tail:
            locs.add(f"{head.rpartition('.')[0]}.{tail}".lstrip("."))
    found = []
    for o, p in zip(ops, paths, strict=True):
        if any(loc == p or loc.startswith(f"{p}.") or p.startswith(f"{loc}.") for loc in locs):
            found.append(o.text)
    return found


def experiment_with(raw: Any, overrides: Sequence[str | Override], source: str = "") -> Experiment:
    """Validate ``raw`` with ``overrides`` applied (as a file would be); an error names the
    overrides that caused it (all of them when it cannot tell)."""
    ops = [o if isinstance(o, Override) else parse_override(o) for o in overrides]
    if not ops:
        return parse_experiment(raw, source)
    applied, paths = apply_overrides(raw, ops)
    try:
        return parse_experiment(applied, f"{source} with overrides".strip())
    except ConfigError as e:
        named = _blamed(str(e), ops, paths) or [o.text for o in ops]
        which = "the override" if len(named) == 1 else "the overrides"
        raise ConfigError(f"{e}\n  (from {which} {', '.join(map(repr, named))})") from None


def load_raw(path: str | Path) -> Any:
    """The experiment file's mapping, as YAML read it (safely), before validation."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"experiment file {p} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read experiment file {p}: {e}") from None
    return load_yaml(text, str(p))


def load_with_overrides(path: str | Path, overrides: Sequence[str | Override] = ()) -> Experiment:
    """:func:`~richrep.config.load_experiment` with ``overrides`` applied before validation."""
    return experiment_with(load_raw(path), overrides, str(Path(path)))
