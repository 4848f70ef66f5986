"""Protocols, statistics, the comparison table and the report, on a small real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import richrep.evaluation.inputs as inputs
import richrep.evaluation.protocols as protocols
from richrep.cli import app
from richrep.config import SuiteEntry, parse_experiment
from richrep.data import Split, apply_shift, load_task
from richrep.pipeline import run_experiment
from richrep.report.tables import build_comparison, to_markdown
from richrep.representations import Representation
from richrep.representations.features import Featurizer, Flatten
from richrep.results import Row
from richrep.results.stats import aggregate, summarize
from richrep.store import read_jsonl


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert s["ci95"] == pytest.approx(4.302653 / 3**0.5, rel=1e-5)  # t(0.975, 2) · std / √n
    one = summarize([0.5])
    assert one["std"] == 0.0 and one["n"] == 1
    rows = [{"metric": "accuracy", "value": v, "g": g} for v, g in [(1, "a"), (3, "a"), (5, "b")]]
    agg = {a["g"]: a for a in aggregate(rows, ["g"])}
    assert agg["a"]["mean"] == 2 and agg["b"]["n"] == 1


@pytest.fixture(scope="module")
def target():
    task = load_task("mnist1d", {"num_samples": 1500})
    return apply_shift(task, "classes", {"keep": [0, 1, 2]})


def _ctx(task, seed=0):
    feats = Featurizer({"input": Flatten()}, device=torch.device("cpu"), dtype=torch.float32)
    return protocols.Context(
        feats,
        task,
        parse_experiment(
            {"name": "x", "data": {"dataset": "mnist1d"}, "model": {"encoder": "mlp"}}
        ).evaluation.probe,
        seed=seed,
    )


INPUT = Representation("input", 0, (), ("input",), 40, 0)


def test_probes_never_see_test_data(target, monkeypatch):
    """Every array a probe is fit on is checked: no test example may be in it."""
    test_rows = {tuple(r.tolist()) for r in target.test.x.flatten(1)}
    seen = []
    real = protocols.make_probe

    def spy(*a, **k):
        probe = real(*a, **k)
        fit = probe.fit

        def checked_fit(X, y, *rest, **kw):
            assert not rest and not kw, "the probe was handed extra (validation/test) data"
            rows = {tuple(r.tolist()) for r in torch.as_tensor(X)}
            assert not rows & test_rows, "a test example reached probe.fit"
            seen.append(len(rows))
            return fit(X, y)

        probe.fit = checked_fit
        return probe

    monkeypatch.setattr(protocols, "make_probe", spy)
    entry = SuiteEntry(name="t", sizes=[5, "all"], draws=2)
    rows = protocols.Transfer().evaluate(_ctx(target), INPUT, target, entry)
    assert len(rows) == 3 and len(seen) == 3 and seen[0] == 15  # 5 per class × 3 classes


def test_each_draw_seeds_its_own_validation_split_from_the_experiment_seed(target, monkeypatch):
    """The resolved probe spec leaves ``random_state`` and ``device`` to the run: every draw's
    probe holds out its own validation split, seeded by the experiment's seed and the draw,
    each row records that seed, and the probe runs on the run's evaluation device."""
    real = inputs.stratified_val_split
    used = []

    def spy(y_idx, fraction, seed):
        used.append(seed)
        return real(y_idx, fraction, seed)

    monkeypatch.setattr(inputs, "stratified_val_split", spy)
    entry = SuiteEntry(name="t", sizes=[10], draws=3)
    rows = protocols.Transfer().evaluate(_ctx(target), INPUT, target, entry)
    seeds = [r["probe_seed"] for r in rows]
    assert used == seeds and len(set(seeds)) == 3
    y = np.repeat(np.arange(3), 10)  # the same labels: each seed holds out other examples
    assert len({tuple(real(y, 0.2, s)[1]) for s in seeds}) == 3
    other = protocols.Transfer().evaluate(_ctx(target, seed=7), INPUT, target, entry)
    moved = [r["probe_seed"] for r in other]  # the experiment's seed reaches every draw's probe
    assert all(a != b for a, b in zip(moved, seeds, strict=True))
    assert _ctx(target).make_probe(entry).device == "cpu"  # the run's device, not "auto"


def test_model_selection_ignores_test_labels(target):
    """Scrambling the test labels changes the accuracy, never the chosen regularization."""
    entry = SuiteEntry(name="t", sizes=[20, "all"], draws=2)
    clean = protocols.Transfer().evaluate(_ctx(target), INPUT, target, entry)
    g = torch.Generator().manual_seed(0)
    scrambled_test = Split(
        target.test.x, target.test.y[torch.randperm(len(target.test), generator=g)]
    )
    noisy = protocols.Transfer().evaluate(
        _ctx(target), INPUT, target.with_splits(test=scrambled_test), entry
    )
    assert [r["C"] for r in clean] == [r["C"] for r in noisy]
    assert [r["train_n"] for r in clean] == [r["train_n"] for r in noisy]
    assert all(a["value"] > b["value"] for a, b in zip(clean, noisy, strict=True))


def test_transfer_without_all_extracts_only_what_draws_use(target):
    calls = []

    class Count(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.flatten(1)

    ctx = _ctx(target)
    ctx.featurizer = Featurizer({"m": Count()}, device=torch.device("cpu"), dtype=torch.float32)
    rep = Representation("single", 1, (0,), ("m",), 40, 0)
    protocols.Transfer().evaluate(ctx, rep, target, SuiteEntry(name="t", sizes=[4, 8], draws=2))
    assert sum(calls) <= 3 * (2 * 4 + 2 * 8) + len(target.test)  # not the whole pool
    protocols.Transfer().evaluate(ctx, rep, target, SuiteEntry(name="t", sizes=[4, 8], draws=2))
    assert sum(calls) <= 3 * (2 * 4 + 2 * 8) + len(target.test)  # cached: nothing extracted twice


@pytest.mark.slow
def test_small_run_builds_table_and_report(tiny, tmp_path):
    tiny["training"]["seeds"] = 3
    tiny["training"]["baselines"] = [{"kind": "wide", "k": 3}, {"kind": "joint", "k": 3}]
    tiny["evaluation"] = {"subsets": 2, "probe": {"Cs": [0.01, 1.0]}, "suite": [
        {"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [5, "all"], "draws": 2},
        {"name": "noise", "shifts": [{"classes": {"keep": [0, 1, 2, 3, 4]}}, {"mnist1d_noise": {"scale": 0.3}}],
         "protocol": "robustness"},
    ]}  # fmt: skip
    exp = parse_experiment(tiny)
    store = run_experiment(exp, tmp_path, log=lambda m: None).store
    rows = [json.loads(line) for line in store.results.read_text().splitlines()]
    keys = {"representation", "k", "seeds", "dim", "params", "shift", "protocol", "metric", "value"}
    assert all(keys <= set(r) for r in rows)
    kinds = {r["representation"] for r in rows}
    assert kinds == {"input", "random", "single", "cat", "wide", "joint"}
    # 6 reps... : input, random3, single×3, cat2×2, cat3, wide3, joint3 = 10; new: 3 fits; noise: 1
    assert len(rows) == 10 * 3 + 10 * 1
    comp = build_comparison([Row.from_dict(r) for r in rows], ["new", "noise"])
    assert comp.columns == ["input", "random3", "single", "cat2", "cat3", "wide3", "joint3"]
    headline = ["cat3 − single", "cat3 − wide3"]
    assert comp.k == 3 and [g.name for g in comp.headline_gains] == headline
    assert [g.name for g in comp.gain_columns] == ["cat2 − single", *headline]
    label, cells = comp.rows[0].label, comp.rows[0].cells
    assert (
        label.startswith("new · transfer · 5/class") and cells["single"].n == 6
    )  # 3 seeds × 2 draws
    assert cells["cat2"].n == 4 and cells["cat3"].n == 2
    md = to_markdown(comp)
    assert "cat3 − single" in md and "| dim / params |" in md
    html = store.report.read_text()
    # the lead figure, two accuracy-vs-K plots and the members' training curves
    assert (
        "<table" in html and html.count("data:image/png;base64,") == 4 and "new · transfer" in html
    )
    r = CliRunner().invoke(app, ["results", str(store.root)])
    assert r.exit_code == 0 and "cat3" in r.output and "wide3" in r.output
    r = CliRunner().invoke(app, ["results", str(store.root), "--format", "csv"])
    assert r.output.count("\n") == len(rows) + 1
    r = CliRunner().invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and exp.run_id()[:10] in r.output
    # a changed suite reuses the training and the finished entries
    tiny["evaluation"]["suite"].append({"name": "all10", "sizes": ["all"]})
    exp2 = parse_experiment(tiny)
    logs = []
    run_experiment(exp2, tmp_path, log=logs.append)
    assert exp2.run_id() == exp.run_id()
    assert any("new: reused" in m for m in logs) and any(m.startswith("all10:") for m in logs)


@pytest.mark.slow
def test_entries_evaluated_in_parallel_threads_equal_one_at_a_time(tiny, tmp_path):
    """runtime.eval_workers evaluates feature-only entries side by side in threads sharing the
    feature cache and the source probes; the rows are those of one entry at a time."""
    tiny["evaluation"] = {"subsets": 1, "probe": {"Cs": [0.01, 1.0]}, "suite": [
        {"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [5, "all"], "draws": 2},
        {"name": "noise", "shifts": [{"classes": {"keep": [0, 1, 2, 3, 4]}}, {"mnist1d_noise": {"scale": 0.3}}],
         "protocol": "robustness"},
        {"name": "noise2", "shifts": [{"classes": {"keep": [0, 1, 2, 3, 4]}}, {"mnist1d_noise": {"scale": 0.6}}],
         "protocol": "robustness"},
        {"name": "stream", "protocol": {"continual": {"classes_per_task": 2, "orders": 2}}},
    ]}  # fmt: skip
    tiny["runtime"] = {"threads": 2, "eval_workers": 2}
    logs: list[str] = []
    run = run_experiment(parse_experiment(tiny), tmp_path, log=logs.append)
    assert any("4 entries 2 at a time, 1 thread(s) each" in m for m in logs)
    together = sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(run.store.results))
    for f in run.store.results_dir.iterdir():
        f.unlink()
    tiny["runtime"]["eval_workers"] = 1
    logs.clear()
    run = run_experiment(parse_experiment(tiny), tmp_path, only="evaluate", log=logs.append)
    assert not any("at a time" in m for m in logs)
    alone = sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(run.store.results))
    assert together == alone and len(alone) > 20


def test_features_of_a_split_are_gathered_from_splits_cut_from_the_same_root():
    """Class selections and train + validation pools are rows of the dataset's pool: the
    features of all classes come from those of the first and the last classes, and only rows
    no earlier split had are extracted; the features equal a direct extraction."""
    task = load_task("mnist1d", {"num_samples": 600})
    calls: list[int] = []

    class Count(torch.nn.Module):
        def forward(self, x):
            if len(x) > 1:  # not the batch-size probe
                calls.append(len(x))
            return x.flatten(1)[:, :5] * 2.0

    feat = Featurizer({"m": Count()}, device=torch.device("cpu"), dtype=torch.float32)
    rep = Representation("single", 1, (0,), ("m",), 5, 0)
    low = apply_shift(task, "classes", {"keep": [0, 1, 2, 3, 4]})
    high = apply_shift(task, "classes", {"keep": [5, 6, 7]})
    for t in (low, high):
        feat(rep, protocols.pool(t))
    before = sum(calls)
    everything = protocols.pool(task)
    got = feat(rep, everything)
    missing = len(everything) - len(protocols.pool(low)) - len(protocols.pool(high))
    assert sum(calls) - before == missing > 0  # classes 8 and 9 only
    assert torch.equal(got, everything.x.flatten(1)[:, :5] * 2.0)
    assert protocols.pool(low).rows.root == everything.rows.root
    capped = load_task("mnist1d", {"num_samples": 600}, max_train_per_class=10)  # rows of a pool
    for t in (apply_shift(capped, "classes", {"keep": [0, 1]}), capped):  # larger than train+val
        got = feat(rep, protocols.pool(t))
        assert torch.equal(got, protocols.pool(t).x.flatten(1)[:, :5] * 2.0)
    shifted = apply_shift(low, "mnist1d_noise", {"scale": 0.3})
    assert shifted.train.rows is None or shifted.train.rows.root != everything.rows.root
