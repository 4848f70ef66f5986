"""Every registry entry built from its registry on a tiny input (as timm runs every registered
model): each dataset loads, each shift applies, each augmentation and encoder runs, each
objective gives a loss, each member kind plans, builds and takes one step, each probe fits and
predicts, each protocol evaluates a tiny trained run (and draws its own figure), each floor,
measure, engine and tracker does its job. The tables below give the arguments an entry needs
beyond its defaults; a registry or an entry missing from them fails here, so a new plug-in is
tested the day it lands."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from richrep.config import Spec, parse_experiment
from richrep.data import DATASETS, SHIFTS, Task, apply_shift, load_task
from richrep.data.augment import AUGMENTATIONS, build_augment
from richrep.evaluation.protocols import EvaluationProtocol
from richrep.members import build_model, kind_of, plan_members
from richrep.models import ENCODERS, build_encoder
from richrep.plugins import (
    ENGINES,
    FLOORS,
    MEMBERS,
    OBJECTIVES,
    PROBES,
    PROTOCOLS,
    TRACKERS,
    all_registries,
)
from richrep.run import source_task

# one epoch of training: the tiny run's seeds are hardly better than their untrained encoders
pytestmark = pytest.mark.filterwarnings(
    "ignore::richrep.representations.floor_check.RandomFloorWarning"
)
CPU = torch.device("cpu")
IMAGE, SIGNAL = "image", "signal"  # the tiny tasks a shift applies to (fixture `tasks`)

DATASET_CASES: dict[str, dict[str, Any]] = {
    "digits": {},
    "mnist1d": {"num_samples": 200},
    "colored_mnist1d": {"base_params": {"num_samples": 200}},
    "fashion_mnist": {"download": False},  # the Debian package's files (CI installs them)
    "colored_fashion_mnist": {"base_params": {"download": False}},
    "image_folder": {"path": "{folder}", "size": 8},  # files written under tmp_path
    "npz": {"path": "{npz}"},
    "rotated_domains": {"base": "digits", "angles": [0, 45], "per_domain": 200},
    "image_domains": {"path": "{domains}", "size": 8, "test_fraction": 0.25},
}
SHIFT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "classes": (IMAGE, {"keep": [0, 1, 2]}),
    "colored": (SIGNAL, {}),
    "contrast": (IMAGE, {}),
    "gaussian_blur": (IMAGE, {}),
    "gaussian_noise": (IMAGE, {}),
    "inversion": (IMAGE, {}),
    "mnist1d_noise": (SIGNAL, {}),
    "mnist1d_shear": (SIGNAL, {}),
    "mnist1d_translation": (SIGNAL, {}),
    "rotation": (IMAGE, {}),
}
AUGMENTATION_CASES: dict[str, dict[str, Any]] = {"horizontal_flip": {}, "random_resized_crop": {}}
ENCODER_CASES: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((40,), {"hidden": [8], "feature_dim": 4}),
    "cnn": ((1, 8, 8), {"channels": [4, 8], "feature_dim": 6}),
    "resnet18": ((3, 16, 16), {"widths": [4, 8, 8, 16], "cifar_stem": True}),
    "resnet50": ((3, 16, 16), {"widths": [4, 8, 8, 16], "cifar_stem": True}),
}
N, C = 12, 3  # examples and classes of the objectives' tiny batch
OBJECTIVE_CASES: dict[str, tuple[dict[str, Any], int, tuple[str, ...]]] = {
    # name: (arguments, logits per class, batch keys beside "y")
    "bct": ({}, 2, ()),
    "cross_entropy": ({}, 1, ()),
    "distillation": ({}, 1, ("teacher_logits",)),
    "divdis": ({}, 2, ()),  # labels -1 mark the unlabelled examples
    "fishr": ({}, 1, ("env", "features")),
    "group_dro": ({}, 1, ("env",)),
    "group_dro_sets": ({}, 1, ("group_masks",)),
    "irm": ({}, 1, ("env",)),
    "matryoshka": ({}, 1, ()),
    "pseudo_labels": ({}, 1, ("pseudo",)),
    "simsiam": ({"dim": 8, "pred_dim": 4}, 0, ()),  # its own head on two views
    "vrex": ({}, 1, ("env",)),
}
MEMBER_CASES: dict[str, dict[str, Any] | None] = {
    # kind: the baseline that plans it (None: planned for every run)
    "single": None,
    "wide": {"kind": "wide", "k": 2},
    "wide_dim": {"kind": "wide_dim", "k": 2},
    "joint": {"kind": "joint", "k": 2},
    "distill": {"kind": "distill", "k": 2},
    "diverse": {"kind": "diverse", "k": 2},
    "matryoshka": {"kind": "matryoshka", "k": 2},
    "rfc": {"kind": "rfc", "k": 2},
    "rfc_round": {"kind": "rfc", "k": 2},  # RFC's rounds, planned by an rfc baseline
    "bct": {"kind": "bct", "k": 1},
    "bt2": {"kind": "bt2", "k": 2},
    "simplex": {"kind": "simplex", "k": 1},
}
PROBE_CASES: dict[str, dict[str, Any]] = {"linear": {"Cs": [0.1, 1.0]}, "nearest_mean": {}}
PROTOCOL_CASES: dict[str, dict[str, Any]] = {
    "transfer": {"sizes": ["all"], "draws": 1},
    "robustness": {},
    "few_shot": {"ways": 2, "shots": [1], "queries": 2, "episodes": 2},
    "continual": {"classes_per_task": 1, "orders": 1},
    "retrieval": {"shortlist": [5], "top": 3},
    "truncation": {"dims": [2, 4]},
    "compatibility": {"old": "single-s0", "top": 3, "sequences": {"up": ["single-s0", "cat2"]}},
    "disambiguate": {"labels": [4], "draws": 1},
    "ood": {
        "algorithms": ["erm", "irm"],
        "grid": {"irm": {"penalty_weight": [1.0]}},
        "steps": 3,
        "eval_every": 1,
        "restarts": 1,
        "anneal_steps": 1,
        "columns": ["single"],
    },
    "finetune": {
        "lrs": [0.05],
        "weight_decays": [0.0],
        "max_epochs": 1,
        "head_epochs": 1,
        "batch_size": 64,
        "columns": ["single"],
    },
}
# domain_generalization needs a target with domains: tests/test_domain_generalization.py
# evaluates it end to end (every DG method); here it is built from the registry
PROTOCOL_CASES["domain_generalization"] = {"methods": ["finetune"], "k": 2, "epochs": 1}
BUILT_ONLY = {"domain_generalization"}
FIGURE_CASES = {"compatibility", "continual", "retrieval", "truncation", "domain_generalization"}
DG_METHOD_CASES = {  # each DG method: built from its registry (trained in test_domain_generalization)
    "finetune": {},
    "ensemble": {},
    "uniform_soup": {},
    "greedy_soup": {},
    "diwa": {},
    "large_dropout": {"rate": 0.9},
    "lp_ft": {},
    "cat_2ft": {},
}
FLOOR_CASES = {"input": "input", "random": "random2"}  # floor: its column in the tiny run
MEASURE_CASES: dict[str, dict[str, Any]] = {
    "debiased_cka": {},
    "linear_cka": {},
    "mean_cca": {},
    "procrustes": {},
    "rbf_cka": {},
    "svcca": {},
}
ENGINE_CASES: dict[str, dict[str, Any]] = {"local": {}, "ray": {}}  # ray trains in the slow tier
TRACKER_CASES: dict[str, dict[str, Any]] = {"mlflow": {}}  # a file store beside the runs

CASES: dict[str, Any] = {
    "datasets": DATASET_CASES,
    "shifts": SHIFT_CASES,
    "augmentations": AUGMENTATION_CASES,
    "encoders": ENCODER_CASES,
    "objectives": OBJECTIVE_CASES,
    "members": MEMBER_CASES,
    "probes": PROBE_CASES,
    "protocols": PROTOCOL_CASES,
    "floors": FLOOR_CASES,
    "engines": ENGINE_CASES,
    "trackers": TRACKER_CASES,
    "measures": MEASURE_CASES,
    "figures": FIGURE_CASES,
    "dg_methods": DG_METHOD_CASES,
}
REGISTRIES = all_registries()


def case(kind: str, name: str) -> Any:
    """The table's row of entry ``name`` of registry ``kind``; a missing one fails the test."""
    if name not in CASES[kind]:
        pytest.fail(f"{kind} entry {name!r} has no row in test_registries.py: add one")
    return CASES[kind][name]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_and_entry_has_a_case(kind):
    """A new registry or entry is tested the day it lands; a removed one leaves no stale row."""
    assert kind in CASES, f"registry {kind!r} has no table in test_registries.py: add one"
    assert set(CASES[kind]) == set(REGISTRIES[kind].names())


# -- datasets, shifts, augmentations, encoders -----------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A tiny image folder (two classes), a tiny .npz file and a tiny domain-folder tree."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)

    def classes(where, n):  # two class folders of n images, each class with its own colour
        for c in range(2):
            d = where / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (9, 10, 3), dtype=np.uint8)
                a[..., c] = 255
                Image.fromarray(a).save(d / f"{i}.png")

    for split in ("train", "test"):
        classes(root / "folder" / split, 6)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    np.savez(root / "tiny.npz", x=x, y=np.arange(60) % 3)
    for domain in ("art", "photo"):  # root/<domain>/<class>/<image>
        classes(root / "domains" / domain, 8)
    return {
        "folder": str(root / "folder"),
        "npz": str(root / "tiny.npz"),
        "domains": str(root / "domains"),
    }


def _filled(params: Any, values: dict[str, str]) -> Any:
    if isinstance(params, dict):
        return {k: _filled(v, values) for k, v in params.items()}
    return params.format(**values) if isinstance(params, str) else params


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_loads_a_tiny_task(name, files, request):
    params = _filled(case("datasets", name), files)
    if "fashion" in name:
        request.getfixturevalue("fashion")  # the files' absence: a skip here, a failure in CI
    task = load_task(name, params)
    assert task.num_classes >= 2 and all(len(s) > 0 for s in task.splits().values())
    for split in task.splits().values():
        assert tuple(split.x.shape[1:]) == task.input_shape and len(split.y) == len(split.x)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {
        IMAGE: load_task("digits", {}, seed=0),
        SIGNAL: load_task("mnist1d", {"num_samples": 200}, seed=0),
    }


@pytest.mark.parametrize("name", SHIFTS.names())
def test_shift_applies_to_a_tiny_task(name, tasks):
    on, params = case("shifts", name)
    task = tasks[on]
    shifted = apply_shift(task, name, params, where=f"shift {name}")
    assert shifted.recipe["shifts"][-1] == {name: SHIFTS.validate(name, params)}
    assert all(len(s) > 0 for s in shifted.splits().values())
    if name not in ("classes", "colored"):  # the others change the inputs, not the labels
        assert torch.equal(shifted.test.y, task.test.y)
        assert not torch.equal(shifted.test.x, task.test.x)


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_augmentation_transforms_a_tiny_batch_reproducibly(name):
    augment = build_augment([{name: case("augmentations", name)}])
    x = torch.rand(4, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_forwards_and_backwards_a_tiny_batch(name):
    shape, params = case("encoders", name)
    enc = build_encoder(name, shape, **params)
    z = enc(torch.randn(2, *shape))
    assert z.shape == (2, enc.feature_dim) and torch.isfinite(z).all()
    z.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


# -- objectives, member kinds, probes ---------------------------------------------------------


def _batch(keys: tuple[str, ...], heads: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % C
    make = {
        "teacher_logits": lambda: torch.randn(N, heads, C, generator=g),
        "env": lambda: torch.arange(N) % 2,
        "features": lambda: torch.randn(N, 5, generator=g),
        "group_masks": lambda: torch.stack([y == 0, y != 0], 1),
        "pseudo": lambda: (y[:, None] + torch.arange(heads)) % C,
    }
    return {"y": y, **{k: make[k]() for k in keys}}


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_gives_a_finite_loss_with_gradients(name):
    params, per_class, keys = case("objectives", name)
    obj = OBJECTIVES.build(name, **params).train()
    heads = getattr(obj, "heads", 1)
    batch = _batch(keys, heads)
    head = obj.make_head(5, C)
    if head is not None:  # the objective's own head (SimSiam: two views of each example)
        z = torch.randn(2 * N, 5, requires_grad=True)
        logits, leaf = head(z), z
    else:
        leaf = torch.randn(N, per_class * heads * C, requires_grad=True)
        logits = leaf
    if name == "divdis":
        batch["y"][: N // 2] = -1  # half of them unlabelled
    loss = obj(logits, batch)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@pytest.fixture(scope="module")
def tiny_raw() -> dict[str, Any]:
    from conftest import TINY

    raw = copy.deepcopy(TINY)
    raw["data"]["params"]["num_samples"] = 400
    return raw


@pytest.mark.parametrize("name", MEMBERS.names())
def test_member_kind_plans_builds_and_takes_a_step(name, tiny_raw):
    """Planned from its baseline, each member of the kind is built, gets what it takes from
    the members it requires, its targets and its training data, and its objective gives a
    finite loss on a batch spread over that data."""
    baseline = case("members", name)
    raw = copy.deepcopy(tiny_raw)
    if baseline is not None:
        raw["training"]["baselines"] = [baseline]
    exp = parse_experiment(raw)
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    mine = [m for m in members if m.kind == name]
    assert mine
    models = {m.name: build_model(m, exp, task) for m in members}
    for m in mine:
        kind, model = kind_of(m), models[m.name]
        teachers = [models[r] for r in m.requires]
        kind.prepare(m, model, teachers)
        targets = kind.targets(m, task, teachers, device=CPU, dtype=torch.float32)
        data = kind.training_data(m, task)
        objective = kind.objective(m, exp)
        extra = objective.prepare(data, targets, augmented=False)
        idx = torch.linspace(0, len(data) - 1, 16).long()
        batch = {"y": data.y[idx], **{k: v[idx] for k, v in extra.items()}}
        loss = objective(model(data.x[idx]), batch)
        assert torch.isfinite(loss), m.name
        loss.backward()


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_fits_and_predicts_tiny_features(name):
    from richrep.evaluation.probes import make_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    X = torch.randn(60, 4, generator=g) + 3 * torch.nn.functional.one_hot(y, 4)
    probe = make_probe(name, case("probes", name), seed=0, device="cpu").fit(X, y)
    assert probe.predict(X).shape == (60,) and probe.score(X, y) > 0.9


# -- protocols, figures, floors on a tiny trained run --------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_raw):
    """MNIST-1D, tiny and coloured (environments, groups, two classes), 2 seeds and a
    two-head diverse member, 1 epoch each: what every protocol can evaluate."""
    from richrep.pipeline import run_experiment

    raw = copy.deepcopy(tiny_raw)
    raw["data"]["source"] = ["colored"]
    raw["model"]["params"] = {"hidden": [16], "feature_dim": 8}
    raw["training"].update(epochs=1, baselines=[{"kind": "diverse", "k": 2}])
    raw["evaluation"] = {"subsets": 1, "probe": {"Cs": [0.1, 1.0]}}
    raw["runtime"] = {"threads": 1, "engine": "local"}
    out = tmp_path_factory.mktemp("runs")
    return run_experiment(parse_experiment(raw), out, log=lambda m: None)


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_evaluates_a_tiny_run(name, run, tmp_path):
    from richrep.report.figures.protocols import FIGURES

    spec = Spec(name=name, params=case("protocols", name))
    if name in BUILT_ONLY:
        assert isinstance(PROTOCOLS.build(name, **spec.params), EvaluationProtocol)
        return
    entry = {k: v for k, v in spec.params.items() if k in ("sizes", "draws")}
    params = {k: v for k, v in spec.params.items() if k not in entry}
    rows = run.evaluate(run.source_task, {name: params}, name=name, **entry)
    assert rows and all(r.protocol == name and math.isfinite(r.value) for r in rows)
    assert {r.metric for r in rows} <= set(PROTOCOLS.meta(name, "metrics", ("accuracy",)))
    if name in FIGURES:  # the protocol's own figure, from its rows
        from richrep.report.plots import save

        fig = FIGURES.build(name, rows, name)
        assert fig is not None
        save(fig, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_every_protocol_figure_draws_from_its_protocol():
    from richrep.report.figures.protocols import FIGURES

    assert set(FIGURES.names()) <= set(PROTOCOLS.names())


@pytest.mark.parametrize("name", FLOORS.names())
def test_floor_gives_features_in_the_tiny_run(name, run):
    (rep,) = [r for r in run.representations() if r.kind == name]
    assert rep.column == case("floors", name)
    x = run.features(rep, run.source_task.test)
    assert x.shape == (len(run.source_task.test), rep.dim) and torch.isfinite(x).all()


# -- measures, engines, trackers --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MEASURE_CASES))
def test_measure_compares_tiny_features(name):
    from richrep.analysis.measures import MEASURES, is_similarity

    assert name in MEASURES.names()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g)
    b = a @ torch.randn(6, 5, generator=g) + 0.1 * torch.randn(40, 5, generator=g)
    fn = MEASURES.entry(name).fn
    params = case("measures", name)
    value, self_value = float(fn(a, b, **params)), float(fn(a, a, **params))
    assert math.isfinite(value)
    assert self_value == pytest.approx(1.0 if is_similarity(name) else 0.0, abs=1e-4)


@pytest.mark.parametrize("name", ENGINES.names())
def test_engine_is_built_from_its_registry(name, run):
    from richrep.training.engines.base import Engine

    assert isinstance(ENGINES.build(name, **case("engines", name)), Engine)
    if name == run.exp.runtime.engine.name:  # the tiny run trained through it
        assert all(s.ok for s in run.ledger.statuses(m.name for m in run.members).values())


@pytest.mark.parametrize("name", TRACKERS.names())
def test_tracker_logs_the_tiny_run(name, run, monkeypatch):
    from richrep.stages.track import track

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = TRACKERS.build(name, **case("trackers", name))
    ref = track(run, tracker, log=lambda m: None)
    assert ref and track(run, tracker, log=lambda m: None) == ref  # logged once


@pytest.mark.parametrize("name", sorted(DG_METHOD_CASES))
def test_dg_method_is_built_from_its_registry(name):
    from richrep.plugins import DG_METHODS

    method = DG_METHODS.build(name, **case("dg_methods", name))
    assert method is not None
