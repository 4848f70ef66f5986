"""The few_shot protocol: episodes shared and reproducible, the two classifiers against plain
implementations (a per-episode loop, scikit-learn, LinearProbe), known cases, errors, the rows
and the table they make, and the experiment schema."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import richrep.evaluation.few_shot as few_shot
from richrep.config import Spec, SuiteEntry, parse_experiment
from richrep.data import Split, Task, apply_shift, load_task
from richrep.errors import ConfigError
from richrep.evaluation.probes import LinearProbe
from richrep.evaluation.protocols import Context
from richrep.plugins import PROTOCOLS, load_plugins
from richrep.report.tables import build_comparison, caption
from richrep.representations import Representation
from richrep.representations.features import Featurizer, Flatten
from richrep.results.stats import summarize

load_plugins()


class Projection(torch.nn.Module):
    """A fixed random ReLU projection of the flattened input: an untrained 'encoder'."""

    def __init__(self, d_in: int, d_out: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(d_in, d_out, generator=g) / d_in**0.5)

    def forward(self, x):
        return torch.relu(x.flatten(1) @ self.w)


INPUT = Representation("input", 0, (), ("input",), 40, 0)
SINGLE0 = Representation("single", 1, (0,), ("p0",), 64, 0)
SINGLE1 = Representation("single", 1, (1,), ("p1",), 64, 0)
CAT2 = Representation("cat", 2, (0, 1), ("p0", "p1"), 128, 0)


def _ctx(task: Task, seed: int = 0) -> Context:
    encoders = {"input": Flatten(), "p0": Projection(40, 64, 0), "p1": Projection(40, 64, 1)}
    feats = Featurizer(encoders, device=torch.device("cpu"), dtype=torch.float32)
    return Context(feats, task, Spec(name="linear"), seed=seed)


def _entry(name: str = "fs", **params) -> SuiteEntry:
    return SuiteEntry(name=name, protocol=Spec(name="few_shot", params=params))


@pytest.fixture(scope="module")
def target() -> Task:
    task = load_task("mnist1d", {"num_samples": 1500})
    return apply_shift(task, "classes", {"keep": [5, 6, 7, 8, 9]})


def _task(per_class: list[int], noise: float = 0.1, seed: int = 0) -> Task:
    """A hand-made vector task whose test split has ``per_class[c]`` examples of class c and
    inputs one-hot(label) * 10 + noise (every class perfectly separable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    dim = len(per_class)
    x = 10 * torch.nn.functional.one_hot(y, dim).float() + noise * torch.randn(
        len(y), dim, generator=g
    )
    split = Split(x, y)
    k = len(per_class)
    return Task("hand", split, split, split, tuple(range(k)), tuple(map(str, range(k))), "vector")


def test_episodes_are_shared_by_representations_and_reproducible(target, monkeypatch):
    seen = []
    real = few_shot.prototype_predict

    def spy(feats, support, query):
        seen.append((support.clone(), query.clone()))
        return real(feats, support, query)

    monkeypatch.setattr(few_shot, "prototype_predict", spy)
    proto = few_shot.FewShot(episodes=30, shots=[1, 5], queries=10)
    for rep in (INPUT, SINGLE0):  # fresh contexts: nothing cached is shared
        proto.evaluate(_ctx(target), rep, target, _entry())
    assert len(seen) == 4
    for (s_a, q_a), (s_b, q_b) in zip(seen[:2], seen[2:], strict=True):
        assert torch.equal(s_a, s_b) and torch.equal(q_a, q_b)
    y = target.test.y
    support, query = seen[1]  # 5-shot
    assert support.shape == (30, 5, 5) and query.shape == (30, 50)
    for s, q in zip(support, query, strict=True):
        classes = y[s[:, 0]]
        assert len(set(classes.tolist())) == 5  # five distinct classes
        assert torch.equal(y[s], classes[:, None].expand(5, 5))  # support row j: class j
        assert torch.equal(y[q], classes.repeat_interleave(10))  # queries class-major
        assert not set(s.flatten().tolist()) & set(q.tolist())  # disjoint
        assert len(set(q.tolist())) == 50
    again = few_shot.episodes(y, 5, 5, 10, 30, 0, "fs")
    assert torch.equal(again[0], support) and torch.equal(again[1], query)
    for other in (
        few_shot.episodes(y, 5, 5, 10, 30, 1, "fs"),
        few_shot.episodes(y, 5, 5, 10, 30, 0, "x"),
    ):
        assert not torch.equal(other[0], support)


@pytest.mark.parametrize("classifier", ["prototype", "linear"])
def test_separable_features_give_accuracy_one_and_no_interval(classifier):
    # exactly `ways` classes: with a sixth, the linear probe's standardization on the support
    # would blow its noise-only column up to unit variance (scikit-learn errs there too)
    task = _task([40] * 5)
    proto = few_shot.FewShot(episodes=25, shots=[1, 5], classifier=classifier)
    rows = proto.evaluate(
        _ctx(task), Representation("input", 0, (), ("input",), 5, 0), task, _entry()
    )
    assert {r.metric for r in rows} == {"accuracy"}  # one row per episode, nothing derived
    assert len(rows) == 50 and all(r.value == 1.0 for r in rows)
    table = build_comparison(rows)
    assert [t.target.size for t in table.rows] == [1, 5]
    for t in table.rows:  # 25 episodes of accuracy 1: no spread, so no interval (not ± 0)
        cell = t.cells["input"]
        assert (cell.mean, cell.n, cell.unit, cell.ci95) == (1.0, 25, "episodes", None)
        assert cell.text() == "1.000 (n=25, no interval)"


def test_prototype_equals_a_per_episode_loop(target):
    feats = _ctx(target).featurizer(SINGLE0, target.test)
    for shots in (1, 5):
        support, query = few_shot.episodes(target.test.y, 5, shots, 15, 40, 3, "loop")
        pred = few_shot.prototype_predict(feats, support, query)
        for i in range(40):
            protos = []
            for j in range(5):
                unit = [f / f.norm() for f in feats[support[i, j]]]
                m = torch.stack(unit).mean(0)
                protos.append(m / m.norm())
            expect = []
            for q in query[i]:
                f = feats[q] / feats[q].norm()
                expect.append(int(torch.argmax(torch.stack([f @ p for p in protos]))))
            assert pred[i].tolist() == expect


@pytest.mark.slow
def test_linear_agrees_with_scikit_learn_and_linear_probe(target):
    feats = _ctx(target).featurizer(SINGLE0, target.test)
    for shots in (1, 5):
        support, query = few_shot.episodes(target.test.y, 5, shots, 15, 8, 0, "sk")
        pred, converged = few_shot.linear_predict(feats, support, query, C=0.1)
        assert bool(converged.all())
        agree_sk = agree_probe = 0
        for i in range(8):
            xs = feats[support[i].flatten()].double().numpy()
            ys = np.repeat(np.arange(5), shots)
            xq = feats[query[i]].double().numpy()
            scaler = StandardScaler().fit(xs)
            sk = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000)
            sk.fit(scaler.transform(xs), ys)
            agree_sk += int((sk.predict(scaler.transform(xq)) == pred[i].numpy()).sum())
            probe = LinearProbe(Cs=(0.1,), max_iter=1000, tol=1e-8, device="cpu", dtype="float64")
            probe.fit(xs, ys)  # one C: no validation split, fit on all the support
            agree_probe += int((probe.predict(xq) == pred[i].numpy()).sum())
        assert agree_sk >= 0.99 * pred.numel() and agree_probe >= 0.99 * pred.numel()  # 1.0 here


def test_linear_ignores_constant_columns(target):
    """A column constant on the support (a dead ReLU unit, an offset) gets scale 1 and weight 0,
    as in scikit-learn's StandardScaler: predictions are those without it."""
    feats = _ctx(target).featurizer(SINGLE0, target.test)
    const = torch.cat([feats, torch.zeros(len(feats), 1), torch.full((len(feats), 1), 3.0)], 1)
    support, query = few_shot.episodes(target.test.y, 5, 5, 15, 20, 0, "const")
    plain, _ = few_shot.linear_predict(feats, support, query, C=0.1)
    padded, converged = few_shot.linear_predict(const, support, query, C=0.1)
    assert bool(converged.all()) and torch.equal(plain, padded)


def test_linear_rows_record_the_classifier_and_convergence(target):
    proto = PROTOCOLS.build("few_shot", episodes=10, shots=[5], classifier="linear", C=0.5)
    rows = proto.evaluate(_ctx(target), SINGLE0, target, _entry(classifier="linear", C=0.5))
    acc = [r for r in rows if r.metric == "accuracy"]
    assert len(acc) == 10 and all(r["classifier"] == "linear" and r["converged"] for r in acc)
    assert 0.2 < np.mean([r.value for r in acc]) <= 1.0


def test_clear_errors_for_too_few_classes_or_examples(target):
    with pytest.raises(ConfigError, match=r"6-way episodes but the target has only 5 classes"):
        few_shot.FewShot(ways=6).evaluate(_ctx(target), INPUT, target, _entry())
    task = _task([40, 40, 8, 40, 40])
    rep = Representation("input", 0, (), ("input",), 5, 0)
    with pytest.raises(ConfigError, match=r"5 \+ 15 = 20 test examples.*class 2 \('2'\) has 8"):
        few_shot.FewShot().evaluate(_ctx(task), rep, task, _entry())
    few_shot.FewShot(shots=[1], queries=7).evaluate(_ctx(task), rep, task, _entry())  # 8 is enough
    # the preflight miniature (2 examples per class) checks the classes, not the counts
    mini = task.miniature()
    few_shot.FewShot().check(_entry(), mini, mini)
    with pytest.raises(ConfigError, match="only 5 classes"):
        few_shot.FewShot(ways=6).check(_entry(), mini, mini)


def test_end_to_end_through_the_registry_rows_and_table(target):
    proto = PROTOCOLS.build("few_shot", episodes=20, shots=[1, 5])
    entry = _entry(episodes=20, shots=[1, 5])
    ctx = _ctx(target)
    rows = []
    for rep in (INPUT, SINGLE0, SINGLE1, CAT2):  # the stage's order: floors, singles, cat
        rows += proto.evaluate(ctx, rep, target, entry)
    assert {r.metric for r in rows} == {"accuracy"}  # intervals and gains are the views' job
    assert {r.protocol for r in rows} == {"few_shot"}
    acc = {}
    for r in rows:
        if r.metric == "accuracy":
            assert r.n == 75 and r.train_n == 5 * r.size and r.draw == 0
            assert r["classifier"] == "prototype" and r["ways"] == 5
            acc.setdefault((r.column, r.seeds, r.size), {})[r.episode] = r.value
    assert len(acc) == 8 and all(sorted(v) == list(range(20)) for v in acc.values())
    table = build_comparison(rows)
    assert [t.target.size for t in table.rows] == [1, 5]
    for t in table.rows:
        singles = [acc[("single", s, t.target.size)] for s in ((0,), (1,))]
        per_episode = [(singles[0][i] + singles[1][i]) / 2 for i in range(20)]
        s = summarize(per_episode)  # the seeds averaged per episode, the interval over episodes
        single = t.cells["single"]
        assert (single.n, single.unit) == (20, "episodes")
        assert single.mean == pytest.approx(s["mean"]) and single.ci95 == pytest.approx(s["ci95"])
        cat = acc[("cat2", (0, 1), t.target.size)]
        assert t.cells["cat2"].n == 20
        assert t.cells["cat2"].ci95 == pytest.approx(summarize(list(cat.values()))["ci95"])
        d = [cat[i] - per_episode[i] for i in range(20)]
        gain = t.gains["cat2 − single"]  # paired per episode
        assert gain is not None and gain.method == "paired" and gain.n == 20
        assert gain.paired_over == "episodes" and "paired over 20 episodes" in gain.ci_text()
        assert gain.diff == pytest.approx(np.mean(d))
        assert gain.ci95 == pytest.approx(summarize(d)["ci95"])
    assert "n = few-shot episodes, each averaged over seeds" in caption(table)


def test_experiment_schema_accepts_and_rejects_few_shot_entries(tiny):
    entry = {
        "name": "fs",
        "shifts": [{"classes": {"keep": [5, 6, 7, 8, 9]}}],
        "protocol": {"few_shot": {"episodes": 50, "shots": [1, 5]}},
    }
    tiny["evaluation"] = {"suite": [entry]}
    exp = parse_experiment(tiny)
    (fs,) = exp.evaluation.suite
    assert fs.protocol.name == "few_shot"
    assert fs.protocol.params["episodes"] == 50 and fs.protocol.params["shots"] == [1, 5]
    assert fs.protocol.params["ways"] == 5 and fs.protocol.params["classifier"] == "prototype"
    for bad, arg in [({"ways": 1}, "ways"), ({"shots": [0]}, "shots"), ({"shots": []}, "shots"),
                     ({"classifier": "svm"}, "classifier"), ({"C": 0}, "C")]:  # fmt: skip
        entry["protocol"] = {"few_shot": bad}
        with pytest.raises(ConfigError, match=f"few_shot.*argument '{arg}'"):
            parse_experiment(tiny)
