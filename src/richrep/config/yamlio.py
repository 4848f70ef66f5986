"""Safe YAML for experiment files: ``yaml.SafeLoader`` with limits and strict mappings.

* aliases are bounded: at most :data:`MAX_ALIASES` alias uses and :data:`MAX_NODES` nodes once
  every alias is expanded, so a "billion laughs" bomb fails fast instead of filling memory when
  the result is validated or copied; recursive aliases are refused;
* a key repeated in one mapping is an error naming the key and both lines (merge keys ``<<``
  may still be overridden);
* an integer longer than Python converts (``sys.get_int_max_str_digits``) and a character YAML
  does not allow (NUL, other control characters) are errors naming the line;
* every parse error is a :class:`~richrep.errors.ConfigError` naming the source and line.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from richrep.errors import ConfigError

MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_DEPTH = 200
MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with alias and size limits and duplicate keys refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ComposerError(
                    None,
                    None,
                    f"more than {MAX_ALIASES} aliases (*name): refused as a possible alias bomb",
                    self.peek_event().start_mark,
                )
        if self._depth >= MAX_DEPTH:
            raise ComposerError(
                None,
                None,
                f"nested more than {MAX_DEPTH} levels deep",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _check_size(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            _check_duplicates(self, node)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts
            limit = sys.get_int_max_str_digits()
            raise ConstructorError(
                None,
                None,
                f"an integer of {len(str(node.value))} characters is too long to read "
                f"(at most {limit} digits)",
                node.start_mark,
            ) from None


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def _check_size(root: Node) -> None:
    """Refuse a document whose alias-expanded tree exceeds :data:`MAX_NODES` nodes, is deeper
    than :data:`MAX_DEPTH` or refers to itself."""
    seen: dict[int, tuple[int, int]] = {}  # node id -> (expanded size, height)
    active: set[int] = set()

    def refuse(problem: str, node: Node) -> ComposerError:
        return ComposerError(None, None, problem, node.start_mark)

    def walk(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise refuse("a recursive alias is not allowed", node)
        if key not in seen:
            size, height = 1, 0
            if not isinstance(node, ScalarNode):
                active.add(key)
                children: list[Node] = (
                    node.value
                    if isinstance(node, SequenceNode)
                    else [n for pair in node.value for n in pair]
                )
                for child in children:
                    s, h = walk(child, depth + 1)
                    size, height = size + s, max(height, h + 1)
                    if size > MAX_NODES:
                        raise refuse(
                            f"expands to more than {MAX_NODES} values through its aliases: "
                            f"refused as a possible alias bomb",
                            child,
                        )
                active.discard(key)
            seen[key] = size, height
        if depth + seen[key][1] > MAX_DEPTH:
            raise refuse(f"nested more than {MAX_DEPTH} levels deep through its aliases", node)
        return seen[key]

    walk(root, 0)


def _check_duplicates(loader: StrictLoader, node: MappingNode) -> None:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # an unhashable key: SafeConstructor reports it
        if key in seen:
            raise ConstructorError(
                None,
                None,
                f"duplicate key {_shown(key_node, key)!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line


def _shown(node: Node, key: Any) -> Any:
    return node.value if isinstance(node, ScalarNode) else key


def load_yaml(text: str, source: str = "") -> Any:
    """Parse one YAML document safely (see the module docstring). Raises ConfigError naming
    ``source`` and the line on any YAML error, a duplicate key or a refused alias."""
    loader = None
    try:
        loader = StrictLoader(text)  # the reader refuses NUL and other control characters here
        return loader.get_single_data()
    except yaml.reader.ReaderError as e:
        raise ConfigError(_reader_message(e, text, source)) from None
    except yaml.MarkedYAMLError as e:
        raise ConfigError(_message(e, source)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source or 'text'} is not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(
            f"{source or 'text'} is not valid YAML: nested too deeply to read"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _reader_message(e: yaml.reader.ReaderError, text: str, source: str) -> str:
    if not isinstance(e.character, int):
        return f"{source or 'text'} is not valid YAML: {e}"
    before = text[: e.position]
    line, column = before.count("\n") + 1, e.position - before.rfind("\n")
    return (
        f"{source or 'text'} is not valid YAML (line {line}, column {column}): the character "
        f"U+{e.character:04X} (a control character) is not allowed in YAML; remove it"
    )


def _message(e: yaml.MarkedYAMLError, source: str) -> str:
    mark = e.problem_mark or e.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    what = "; ".join(str(p) for p in (e.context, e.problem) if p) or "invalid"
    return f"{source or 'text'} is not valid YAML{where}: {what}"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # never emit anchors: the output reads back under load_yaml's limits


def dump_yaml(obj: Any) -> str:
    """``obj`` as block YAML, keys in their order, without anchors or aliases."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
