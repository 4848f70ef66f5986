"""The open design: a new objective, member kind and protocol registered from test code run end
to end; no import circle; the analysis library loads no pipeline code; the feature cache on
disk; run folders of another format are refused."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import parse_experiment
from richrep.errors import StoreError
from richrep.members import MemberKind
from richrep.objectives import Objective
from richrep.pipeline import run_experiment
from richrep.plugins import MEMBERS, OBJECTIVES, PROTOCOLS
from richrep.run import Run, open_run

SRC = Path(__file__).resolve().parent.parent / "src"


class SquaredError(Objective):
    """Squared error between softmax outputs and one-hot labels (a Brier-score loss)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits, batch):
        onehot = F.one_hot(batch["y"], logits.shape[-1]).float()
        return self.scale * ((logits.float().softmax(-1) - onehot) ** 2).sum(-1).mean()


class Brier(MemberKind):
    """One network per seed trained with the squared-error objective."""

    def objective(self, member, exp):
        return SquaredError(scale=2.0)


class Margin:
    """Nearest-centroid accuracy and the mean margin between the two nearest centroids."""

    def __init__(self, standardize: bool = True) -> None:
        self.standardize = standardize

    def evaluate(self, ctx, rep, target, entry):
        train, test = ctx.pool(target), target.test
        a, b = ctx.featurizer(rep, train), ctx.featurizer(rep, test)
        if self.standardize:
            mu, sd = a.mean(0), a.std(0) + 1e-6
            a, b = (a - mu) / sd, (b - mu) / sd
        centroids = torch.stack([a[train.y == c].mean(0) for c in range(target.num_classes)])
        d = torch.cdist(b, centroids)
        acc = float((d.argmin(1) == test.y).float().mean())
        two = d.topk(2, largest=False).values
        margin = float((two[:, 1] - two[:, 0]).mean())
        return [
            ctx.row(entry, rep, "accuracy", acc, len(test), train_n=len(train)),
            ctx.row(entry, rep, "margin", margin, len(test), train_n=len(train)),
        ]


@pytest.fixture
def plugins():
    OBJECTIVES.register("squared_error")(SquaredError)
    MEMBERS.register("brier", label="brier{k}", order=80, marker="P", color="tab:cyan")(Brier)
    PROTOCOLS.register("margin", metrics=("accuracy", "margin"))(Margin)
    yield
    for reg, name in ((OBJECTIVES, "squared_error"), (MEMBERS, "brier"), (PROTOCOLS, "margin")):
        reg.unregister(name)


def test_plugins_from_test_code_run_end_to_end(plugins, tiny, tmp_path):
    tiny["training"]["baselines"] = [{"kind": "brier", "k": 2}]
    tiny["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [
            {"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": ["all"]},
            {
                "name": "centroids",
                "shifts": [{"classes": {"keep": [5, 6, 7]}}],
                "protocol": {"margin": {}},
            },
        ],
    }
    cfg = tmp_path / "plug.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    (run_dir,) = (p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    sidecar = json.loads((run_dir / "checkpoints" / "brier2-s0.json").read_text())
    assert sidecar["member"]["kind"] == "brier" and sidecar["history"]
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {r["column"] for r in rows} >= {"brier2", "single", "cat2"}
    assert {r["metric"] for r in rows if r["protocol"] == "margin"} == {"accuracy", "margin"}
    table = runner.invoke(app, ["results", str(run_dir), "--format", "markdown"])
    assert table.exit_code == 0 and "brier2" in table.output and "test margin" in table.output
    html = (run_dir / "report.html").read_text()
    assert "brier2" in html and "margin" in html
    listing = runner.invoke(app, ["list", "members"])
    assert "brier" in listing.output


def test_squared_error_objective_trains_the_member_kind(plugins, tiny):
    tiny["training"]["baselines"] = [{"kind": "brier", "k": 2}]
    exp = parse_experiment(tiny)
    from richrep.members import kind_of, plan_members

    (m,) = [m for m in plan_members(exp, (1, 40)) if m.kind == "brier"]
    obj = kind_of(m).objective(m, exp)
    logits = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    assert float(obj(logits, {"y": torch.tensor([0, 1])})) == pytest.approx(0.0, abs=1e-6)
    assert float(obj(logits, {"y": torch.tensor([1, 0])})) == pytest.approx(4.0, abs=1e-4)


def _imports() -> dict[str, set[str]]:
    """richrep's own import graph (module-level and function-level imports)."""
    root = SRC / "richrep"
    mods = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        base = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    b = base
                    for _ in range(node.level - 1):
                        b = b.rpartition(".")[0]
                    mod = f"{b}.{node.module}" if node.module else b
                targets = [
                    f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names
                ]
            for t in targets:
                r = resolve(t) if t.split(".")[0] == "richrep" else None
                if r and r != m:
                    edges[m].add(r)
    return edges


def test_no_import_circle_and_no_module_over_500_lines():
    edges = _imports()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                circles.append(path[path.index(n) :] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert circles == []
    big = {
        str(f.relative_to(SRC)): n
        for f in (SRC / "richrep").rglob("*.py")
        if (n := len(f.read_text().splitlines())) > 500
    }
    assert big == {}


# The pipeline's layers, top to bottom (docs/design.md): a module imports only from its own
# layer or the layers below it, so data flows one way.
LAYERS = (
    ("cli", "pipeline", "sweeps", "index", "__main__"),
    ("stages",),
    ("report",),
    ("run",),
    ("evaluation", "analysis"),
    ("representations",),
    ("training",),
    ("members",),
    ("objectives", "config"),
    ("data", "models"),
    ("runtime", "store", "results", "plugins", "registry", "errors"),
)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # richrep/__init__.py: its version and lazy names (imported by string)
        return len(LAYERS)
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def test_every_import_goes_down_the_pipeline():
    edges = _imports()
    unknown = sorted({m.split(".")[1] for m in edges if "." in m} - {n for L in LAYERS for n in L})
    assert unknown == [], f"place these in LAYERS (and docs/design.md): {unknown}"
    upward = sorted(
        f"{m} -> {n}" for m, targets in edges.items() for n in targets if _layer(n) < _layer(m)
    )
    assert upward == []


def test_import_richrep_analysis_loads_no_stage_code():
    code = (
        "import sys, richrep.analysis; "
        "print(sorted(m for m in sys.modules if m.startswith(('richrep.training', "
        "'richrep.pipeline', 'richrep.evaluation', 'richrep.report', 'richrep.stages', "
        "'richrep.run', 'richrep.store', 'richrep.config'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _cached_run(tiny, tmp_path):
    tiny["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [{"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [10]}],
    }
    exp = parse_experiment(tiny)
    return exp, run_experiment(exp, tmp_path, log=lambda m: None)


def test_second_evaluation_extracts_nothing_and_a_tampered_cache_file_is_rebuilt(tiny, tmp_path):
    exp, run = _cached_run(tiny, tmp_path)
    before = (run.store.results).read_bytes()
    for f in run.store.results_dir.iterdir():  # force the entry to be evaluated again
        f.unlink()
    logs: list[str] = []
    run_experiment(exp, tmp_path, only="evaluate", log=logs.append)
    assert "features: extracted 0," in " ".join(logs), logs
    assert run.store.results.read_bytes() == before
    victim = sorted(run.store.features.glob("single-s0-*.safetensors"))[0]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    for f in run.store.results_dir.iterdir():
        f.unlink()
    logs.clear()
    run_experiment(exp, tmp_path, only="evaluate", log=logs.append)
    assert "features: extracted 1," in " ".join(logs), logs  # only the tampered file
    assert list((run.store.root / "quarantine").glob(f"*{victim.name}"))
    assert run.store.results.read_bytes() == before


def test_a_run_folder_of_another_format_is_refused(tiny, tmp_path):
    exp, run = _cached_run(tiny, tmp_path)
    (run.store.root / "richrep.json").unlink()  # as written by richrep 0.1
    with pytest.raises(StoreError, match="another version of richrep"):
        open_run(run.store.root)
    with pytest.raises(StoreError, match="another version of richrep"):
        run_experiment(exp, tmp_path, log=lambda m: None)
    r = CliRunner().invoke(app, ["results", str(run.store.root)])
    assert r.exit_code == 2 and "another version of richrep" in r.output


def test_open_run_api(tiny, tmp_path):
    _, run = _cached_run(tiny, tmp_path)
    again = open_run(run.store.root)
    assert isinstance(again, Run) and set(again.encoders()) == {"single-s0", "single-s1"}
    x = again.features("cat2", again.source_task.test)
    assert x.shape == (len(again.source_task.test), 32)
    single, cat2 = again.representation("single"), again.representation("cat2")
    i = cat2.parts.index(single.parts[0])  # catK is its seeds' features side by side
    assert torch.equal(x[:, 16 * i : 16 * (i + 1)], again.features(single, again.source_task.test))
    rows = again.evaluate({"name": "five", "shifts": [{"classes": {"keep": [5, 6]}}], "sizes": [5]})
    assert {r.column for r in rows} >= {"single", "cat2", "input"} and all(r.n > 0 for r in rows)


def test_every_registration_is_found_by_the_plugin_loader():
    """A built-in is one file and one registration: load_plugins imports every module of the
    plug-in packages, so a module that registers must live in one of them."""
    from richrep.registry import PLUGIN_PACKAGES, builtin_modules

    found = set(builtin_modules())
    registering = set()
    for f in (SRC / "richrep").rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            fn = node.func if isinstance(node, ast.Call) else None
            if isinstance(fn, ast.Attribute) and fn.attr == "register":
                parts = list(f.relative_to(SRC).with_suffix("").parts)
                registering.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert registering - {"richrep.registry"} <= found, PLUGIN_PACKAGES


# Functions allowed over 80 lines, each with its reason (none at present).
LONG_FUNCTIONS: dict[str, str] = {}


def _sources() -> list[tuple[str, ast.Module]]:
    return [
        (str(f.relative_to(SRC)), ast.parse(f.read_text()))
        for f in sorted((SRC / "richrep").rglob("*.py"))
    ]


def test_no_function_over_80_lines():
    """Every function and method in src/ fits in 80 lines (its decorators and docstring
    included), but for those listed with a reason."""
    long = {
        f"{path}::{node.name}": node.end_lineno - node.lineno + 1
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 80
    }
    assert {k: n for k, n in long.items() if k not in LONG_FUNCTIONS} == {}
    assert set(LONG_FUNCTIONS) <= set(long), "an exception no longer needed: remove it"


# Public module-level functions that share a name across modules, each with its reason.
SHARED_NAMES = {
    "advise": "the `richrep advise` command (cli/advise.py) is named as the command it runs",
    "analyze": "the `richrep analyze` command (cli) is named as the command it runs",
    "evaluate": "the `richrep evaluate` command (cli) is named as the command it runs",
}


def test_no_two_public_functions_share_a_name():
    """A public module-level function's name says what it is once in src/ (an import by
    name never means two things); methods, private and dunder names aside."""
    where: dict[str, list[str]] = {}
    for path, tree in _sources():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not (
                node.name.startswith("_")
            ):
                where.setdefault(node.name, []).append(path)
    shared = {n: p for n, p in where.items() if len(p) > 1}
    assert {n: p for n, p in shared.items() if n not in SHARED_NAMES} == {}
    assert set(SHARED_NAMES) <= set(shared), "an exception no longer needed: remove it"
