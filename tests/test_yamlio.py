"""Safe YAML: alias bombs fail fast, duplicate keys and syntax errors are ConfigErrors."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest

from richrep.config.yamlio import MAX_ALIASES, dump_yaml, load_yaml
from richrep.errors import ConfigError


@contextlib.contextmanager
def deadline(seconds: float):
    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def bomb(levels: int = 9) -> str:
    """The classic "billion laughs": 9 ** levels strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_fast():
    text = bomb()
    assert len(text) < 1024
    start = time.perf_counter()
    with deadline(10), pytest.raises(ConfigError, match="bomb.yaml.*alias bomb"):
        load_yaml(text, "bomb.yaml")
    assert time.perf_counter() - start < 5


def test_many_aliases_are_refused():
    text = "x: &x 1\nl: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    with deadline(10), pytest.raises(ConfigError, match=f"more than {MAX_ALIASES} aliases"):
        load_yaml(text)


def test_recursive_and_deep_documents_are_refused():
    with deadline(10), pytest.raises(ConfigError, match="recursive alias"):
        load_yaml("a: &a [*a]\n")
    with deadline(10), pytest.raises(ConfigError, match="nested"):
        load_yaml("[" * 300 + "]" * 300)
    with deadline(10), pytest.raises(ConfigError, match="nested more than"):
        load_yaml("[" * 20000 + "]" * 20000)
    deep = "[" * 150 + "1" + "]" * 150  # fine alone, too deep where an alias puts it
    assert load_yaml(f"a: &a {deep}\nb: *a\n")["b"] == load_yaml(deep)
    with deadline(10), pytest.raises(ConfigError, match="nested more than 200 levels deep"):
        load_yaml(f"a: &a {deep}\nb: {'[' * 100}*a{']' * 100}\n")


def test_a_few_anchors_still_work():
    text = (
        "base: &opt {lr: 0.1, momentum: 0.9}\n"
        "a: *opt\n"
        "b: {<<: *opt, lr: 0.5}\n"
        "sizes: &s [10, all]\n"
        "c: {sizes: *s}\n"
    )
    assert load_yaml(text) == {
        "base": {"lr": 0.1, "momentum": 0.9},
        "a": {"lr": 0.1, "momentum": 0.9},
        "b": {"lr": 0.5, "momentum": 0.9},
        "sizes": [10, "all"],
        "c": {"sizes": [10, "all"]},
    }
    assert load_yaml(bomb(levels=2)) == {"a0": ["lol"] * 9, "a1": [["lol"] * 9] * 9}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "name: a\ntraining:\n  lr: 1\n  epochs: 2\n  lr: 3\n",
            r"line 5.*duplicate key 'lr'.*line 3",
        ),
        ("{a: 1, b: 2, a: 3}\n", r"line 1.*duplicate key 'a'"),
        ("x: 1\nx: 1\n", r"line 2.*duplicate key 'x' \(first at line 1\)"),
    ],
)
def test_duplicate_keys_are_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        load_yaml(text, "exp.yaml")


def test_same_key_in_different_mappings_is_fine():
    assert load_yaml("a: {x: 1}\nb: {x: 2}\n") == {"a": {"x": 1}, "b": {"x": 2}}


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: [1, 2\n", 2), ("a: 1\n b: 2\n", 2), ("a: *missing\n", 1), ("a: 1\n---\nb: 2\n", 2)],
)
def test_yaml_errors_name_source_and_line(text, line):
    with pytest.raises(ConfigError, match=rf"^exp\.yaml is not valid YAML \(line {line}\b") as e:
        load_yaml(text, "exp.yaml")
    assert e.value.__cause__ is None


def test_no_python_objects():
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_yaml("!!python/object/apply:os.system ['true']\n")


def test_dump_round_trips_in_order_without_aliases():
    shared = [1, 2]
    obj = {"name": "x", "b": shared, "a": shared, "nested": {"z": 1, "y": None}}
    text = dump_yaml(obj)
    assert "&" not in text and "*" not in text
    assert text.index("name") < text.index("b:") < text.index("a:")
    assert load_yaml(text) == obj
