"""Evaluation reaches the run through a typed view (``RunView``) that ``Run`` implements; the run
store owns every path inside a run folder; the context is built in one place; protocols, floors
and engines have base types, and a plug-in without its method is refused before any work."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.evaluation.protocols import ChecksTarget, EvaluationProtocol
from richrep.evaluation.run_view import RunView
from richrep.pipeline import run_experiment
from richrep.plugins import ENGINES, FLOORS, PROTOCOLS
from richrep.representations import Floor
from richrep.run import Run
from richrep.store import RunStore
from richrep.training.engines import Engine

SRC = Path(__file__).resolve().parent.parent / "src" / "richrep"
RUN_NAMES = {
    "checkpoints",
    "features",
    "results",
    "results.jsonl",
    "plots",
    "report.html",
    "quarantine",
    "analysis",
    "summary.json",
    "finetune_work",
    "finetuned",
    "config.yaml",
    "env.json",
    "richrep.json",
    "run.lock",
    "done",
}


def _trees(folder: Path) -> list[tuple[str, ast.AST]]:
    return [
        (str(f.relative_to(SRC)), ast.parse(f.read_text())) for f in sorted(folder.rglob("*.py"))
    ]


def _signature(member: object) -> inspect.Signature:
    if isinstance(member, property):
        return inspect.signature(member.fget)  # type: ignore[arg-type]
    return inspect.signature(getattr(member, "func", member))  # a cached_property's function


def test_run_implements_the_evaluation_view(tiny, tmp_path):
    run = Run.create(parse_experiment(tiny), tmp_path)
    assert isinstance(run, RunView)
    declared = {n: m for n, m in vars(RunView).items() if not n.startswith("_")}
    assert set(declared) >= {"classifier", "encoder", "checkpoint_sha", "member", "source_task"}
    for name, member in declared.items():
        ours = inspect.getattr_static(Run, name)
        want, got = _signature(member), _signature(ours)
        assert list(got.parameters) == list(want.parameters), name
        assert got.return_annotation == want.return_annotation, name
    assert run.store.work("x") == run.store.root / "finetune_work" / "x"


def test_evaluation_reaches_the_run_through_the_view_not_any():
    loose = []
    for path, tree in _trees(SRC / "evaluation"):
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                name, ann = node.arg, node.annotation
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name, ann = node.target.id, node.annotation
            else:
                continue
            if name not in ("run", "owner"):
                continue
            if ann is None or "Any" in ast.unparse(ann):
                loose.append(f"{path}:{node.lineno}")
    assert loose == []


def test_no_run_folder_name_is_spelled_outside_the_store():
    spelled = [
        f"{path}:{node.lineno} {node.right.value}"
        for path, tree in _trees(SRC)
        if not path.startswith("store/")
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Div)
        and isinstance(node.right, ast.Constant)
        and node.right.value in RUN_NAMES
    ]
    assert spelled == []


def test_the_context_is_built_in_one_place():
    calls = [
        f"{path}:{node.lineno}"
        for path, tree in _trees(SRC)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "Context"
    ]
    assert len(calls) == 1 and calls[0].startswith("run.py:"), calls


@pytest.mark.parametrize(
    ("registry", "base"),
    [(PROTOCOLS, EvaluationProtocol), (FLOORS, Floor), (ENGINES, Engine)],
    ids=["protocols", "floors", "engines"],
)
def test_every_built_in_implements_its_base_type(registry, base):
    assert registry.names()
    assert [e.name for e in registry if not issubclass(e.fn, base)] == []


def test_only_protocols_with_a_check_are_asked_to_check():
    checked = {e.name for e in PROTOCOLS if issubclass(e.fn, ChecksTarget)}
    assert {"robustness", "finetune", "disambiguate"} <= checked
    assert "transfer" not in checked


class NoEvaluate:
    """A protocol whose author forgot evaluate."""


class NoRepresentations:
    """A floor whose author forgot representations."""


class NoTrain:
    """An engine whose author forgot train."""


BAD = [
    (
        PROTOCOLS,
        "no_evaluate",
        NoEvaluate,
        {"evaluation": {"suite": [{"name": "t", "protocol": "no_evaluate"}]}},
        "suite entry 't': protocol 'no_evaluate' .NoEvaluate. has no evaluate",
    ),
    (
        FLOORS,
        "no_representations",
        NoRepresentations,
        {"evaluation": {"floors": ["input", "no_representations"]}},
        r"evaluation.floors\[1\]: floor 'no_representations' .* has no representations",
    ),
    (
        ENGINES,
        "no_train",
        NoTrain,
        {"runtime": {"engine": "no_train", "threads": 1}},
        "runtime.engine: engine 'no_train' .NoTrain. has no train",
    ),
]


@pytest.mark.parametrize(
    ("registry", "name", "cls", "section", "match"), BAD, ids=[b[1] for b in BAD]
)
def test_a_plug_in_without_its_method_is_refused_before_any_work(
    registry, name, cls, section, match, tiny, tmp_path
):
    registry.register(name)(cls)
    try:
        with pytest.raises(ConfigError, match=match):
            run_experiment(parse_experiment({**tiny, **section}), tmp_path, log=lambda m: None)
    finally:
        registry.unregister(name)
    for folder in tmp_path.iterdir():  # nothing trained, nothing evaluated
        store = RunStore(folder)
        assert not any(store.checkpoints.glob("*.safetensors"))
        assert not store.results.exists()
