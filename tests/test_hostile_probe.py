"""Bad input to the probes' protocols, kept: transfer sizes beyond what the target holds, and
test classes that the training data lacks (the run's own data and a suite entry's target)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import richrep.evaluation.protocols as protocols
from richrep.config import SuiteEntry, parse_experiment
from richrep.data import Split, Task, load_task
from richrep.errors import DataError
from richrep.representations import Representation
from richrep.representations.features import Featurizer, Flatten
from richrep.run import Run, base_task

INPUT = Representation("input", 0, (), ("input",), 6, 0)


def _npz(path, y, y_test=None):
    """An .npz of 6 features per example, class c around c; ``x_test``/``y_test`` when given."""
    g = np.random.default_rng(0)

    def x(labels):
        return (g.normal(size=(len(labels), 6)) + labels[:, None]).astype(np.float32)

    arrays = {"x": x(np.asarray(y)), "y": np.asarray(y)}
    if y_test is not None:
        arrays.update(x_test=x(np.asarray(y_test)), y_test=np.asarray(y_test))
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """Five classes of 60 examples: 12 of each held out for testing, 48 left to train on."""
    path = _npz(tmp_path_factory.mktemp("npz") / "d.npz", np.repeat(np.arange(5), 60))
    return load_task("npz", {"path": path})


def _ctx(task):
    feats = Featurizer({"input": Flatten()}, device=torch.device("cpu"), dtype=torch.float32)
    exp = parse_experiment(
        {
            "name": "x",
            "data": {"dataset": "mnist1d"},
            "model": {"encoder": "mlp"},
            "evaluation": {"probe": {"Cs": [0.1, 1.0]}},
        }
    )
    return protocols.Context(feats, task, exp.evaluation.probe, seed=0)


@pytest.mark.parametrize(
    ("sizes", "want", "capped"),
    [
        ([100000], [("all", 0)], [100000]),  # the case: 3 copies labelled 100000
        ([100000, "all"], [("all", 0)], [100000]),  # no second copy of "all"
        ([60, 100000], [("all", 0)], [60, 100000]),  # two sizes, one set of examples
        ([48, 5], [("all", 0), (5, 0), (5, 1), (5, 2)], [48]),  # exactly every example
        ([5, 5], [(5, 0), (5, 1), (5, 2)], []),  # a size given twice
        ([47], [(47, 0), (47, 1), (47, 2)], []),  # one example left out: draws differ
    ],
)
def test_sizes_beyond_the_target_are_evaluated_once_as_all(target, sizes, want, capped):
    pool = len(target.train) + len(target.val)
    assert pool == 5 * 48
    entry = SuiteEntry(name="big", sizes=sizes, draws=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = protocols.Transfer().evaluate(_ctx(target), INPUT, target, entry)
    assert [(r.size, r.draw) for r in rows] == want
    for r in rows:
        assert r.train_n == (pool if r.size == "all" else 5 * min(int(r.size), 48))
    said = [str(w.message) for w in caught if "evaluated once" in str(w.message)]
    if capped:
        assert len(said) == 1  # once per entry, however many sizes it collapses
        assert f"size(s) {capped}" in said[0] and "'big'" in said[0] and "48" in said[0]
    else:
        assert not said


@pytest.mark.parametrize(
    ("y", "y_test", "unseen"),
    [
        (np.repeat(np.arange(5), 20), np.full(30, 7), "[7]"),  # the case
        (np.repeat(np.arange(5), 20), np.repeat([0, 5, 7], 10), "[5, 7]"),
        (np.repeat([0, 2, 4], 20), np.repeat([2, 3], 10), "[3]"),  # ids with gaps
    ],
)
def test_a_test_class_the_training_data_lacks_is_refused(tmp_path, y, y_test, unseen):
    path = _npz(tmp_path / "bad.npz", y, y_test)
    train = str(np.unique(y).tolist())
    match = rf"test split holds class\(es\) \{unseen}.*training split lacks \(it has \{train}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any label-remap warning
        with pytest.raises(DataError, match=match):
            load_task("npz", {"path": path})
    # the run's own data
    raw = {"name": "bad", "data": {"dataset": "npz", "params": {"path": path}}}
    exp = parse_experiment({**raw, "model": {"encoder": "mlp"}})
    with pytest.raises(DataError, match=match):
        base_task(exp)
    # a suite entry's target
    good = _npz(tmp_path / "good.npz", y, np.unique(y).repeat(3))
    exp = parse_experiment(
        {
            "name": "x",
            "data": {"dataset": "npz", "params": {"path": good}},
            "model": {"encoder": "mlp"},
            "evaluation": {"suite": [{"name": "t", "dataset": "npz", "params": {"path": path}}]},
        }
    )
    run = Run.create(exp, tmp_path / "runs")
    with pytest.raises(DataError, match=match):
        run.target(exp.evaluation.suite[0])


@pytest.mark.parametrize(
    ("train_y", "test_y", "unseen"),
    [([0, 0, 1, 1], [0, 2], "[9]"), ([0, 1], [1, 2, 0], "[9]"), ([2, 2], [0, 1], "[3, 5]")],
)
def test_a_task_whose_test_classes_training_lacks_fails_its_check(train_y, test_y, unseen):
    """Tasks a shift or a plug-in builds are checked too; the error names the original ids."""

    def split(y):
        return Split(torch.zeros(len(y), 2), torch.tensor(y))

    task = Task(
        "t", split(train_y), split(train_y), split(test_y), (3, 5, 9), ("a", "b", "c"), "vector"
    )
    with pytest.raises(DataError, match=rf"task 't': the test split holds class\(es\) \{unseen}"):
        task.check()
