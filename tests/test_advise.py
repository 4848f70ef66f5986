"""richrep advise: a known curve is recovered, K within noise says "no gain from more seeds",
an untrained floor as good as catK is said, costs come from the ledger, budgets and bad input
are refused clearly, and the CLI, ``richrep results`` and the report carry the answer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from richrep.analysis.advise import MemberCost, advise
from richrep.analysis.advise_text import advice_lines, floor_note, verdict
from richrep.analysis.budget import parse_budget
from richrep.analysis.saturation import curve, fit_curve
from richrep.cli import app
from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.results import Row
from richrep.run import Run
from richrep.store import FORMAT, RunStore, save_tensors, write_jsonl
from richrep.store.ledger import Ledger

TRUE = (0.80, 0.30, 0.70)  # a, b, c


def _row(column, kind, k, seeds, value, entry="t", draw=0):
    return Row(
        run="r",
        entry=entry,
        protocol="transfer",
        representation=kind,
        column=column,
        k=k,
        seeds=tuple(seeds),
        dim=16 * max(k, 1),
        params=1000 * max(k, 1),
        metric="accuracy",
        value=float(value),
        n=1000,
    )


def _rows(f, ks, n_seeds, per_k, noise, seed=0, entry="t"):
    """single for every seed; catK over ``per_k`` random subsets (one when K = n_seeds)."""
    g = np.random.default_rng(seed)
    out = [
        _row("single", "single", 1, (s,), f(1) + g.normal(0, noise), entry) for s in range(n_seeds)
    ]
    for k in ks:
        if k == 1:
            continue
        subsets = {tuple(sorted(map(int, g.choice(n_seeds, k, replace=False)))) for _ in range(50)}
        for sub in sorted(subsets)[: 1 if k == n_seeds else per_k]:
            out.append(_row(f"cat{k}", "cat", k, sub, f(k) + g.normal(0, noise), entry))
    return out


def _members(n_seeds=5, seconds=2.0):
    singles = [
        MemberCost(f"single-s{s}", "single", 1, s, seconds, 1000, 16) for s in range(n_seeds)
    ]
    teachers = tuple(m.name for m in singles[:5])
    return singles + [
        MemberCost("wide5-s0", "wide", 5, 0, 6.0, 5000, 40),
        MemberCost("distill5-s0", "distill", 5, 0, 1.5, 1000, 16, teachers),
    ]


def _known(k):
    a, b, c = TRUE
    return a - b * k**-c


def test_fit_recovers_exact_parameters():
    k = np.array([1, 2, 3, 4, 6, 8], dtype=float)
    a, b, c = fit_curve(k, curve(*TRUE, k))
    assert (a, b, c) == pytest.approx(TRUE, abs=1e-6)


def test_a_known_curve_is_recovered_with_intervals_that_hold_it():
    rows = _rows(_known, range(1, 9), 10, 6, noise=0.002)
    (adv,) = advise(rows)
    cv = adv.curve
    assert cv is not None and adv.ks == tuple(range(1, 9))
    assert (cv.a.value, cv.b.value, cv.c.value) == pytest.approx(TRUE, abs=0.05)
    for est, true in zip((cv.a, cv.b, cv.c), TRUE, strict=True):
        assert est.low <= true <= est.high
    for k in (10, 20):
        est = adv.ahead[k]
        assert est.low <= _known(k) <= est.high and abs(est.value - _known(k)) < 0.005
    assert adv.next_seed.low > 0 and not adv.no_gain
    assert adv.subsets == 10 + 7 * 6 and adv.seeds == 10


def test_all_k_within_noise_says_no_gain_from_more_seeds():
    rows = _rows(lambda k: 0.8, range(1, 6), 5, 3, noise=0.01, seed=3)
    (adv,) = advise(rows)
    assert adv.no_gain and not adv.measured.excludes_zero
    assert "no gain from more seeds" in verdict(adv)
    assert adv.stops_at == 1


def test_an_untrained_floor_as_good_as_cat_is_said():
    rows = _rows(_known, range(1, 6), 5, 3, noise=0.003)
    cat5 = next(r.value for r in rows if r.column == "cat5")
    rows += [
        _row("random5", "random", 5, range(5), cat5 - 0.001),
        _row("input", "input", 0, (), 0.3),
    ]
    (adv,) = advise(rows, _members())
    assert "5 untrained networks do as well" in floor_note(adv)
    assert "5 untrained networks do as well" in verdict(adv)
    assert adv.cheapest == "random5"  # no training at all


def test_a_clear_floor_is_shown_beside_not_praised():
    rows = _rows(_known, range(1, 6), 5, 3, noise=0.003) + [
        _row("random5", "random", 5, range(5), 0.4)
    ]
    (adv,) = advise(rows, _members())
    assert floor_note(adv) == "floors random5 0.400"


def test_fewer_than_three_k_give_measured_gains_only():
    rows = _rows(_known, (1, 2), 4, 2, noise=0.003)
    (adv,) = advise(rows)
    assert adv.curve is None and adv.ahead == {} and adv.next_seed is None
    assert "at least 3 distinct K" in adv.no_curve
    assert adv.measured is not None and adv.measured.value > 0
    assert "no extrapolation" in verdict(adv)
    assert any(line.startswith("curve: none") for line in advice_lines(adv))


@pytest.mark.parametrize(
    "rows, says",
    [
        ([_row("single", "single", 1, (0,), 0.7)], "only K = 1 measured"),
        ([_row("wide5", "wide", 5, (0,), 0.7)], "no seeds measured"),
        ([_row("single", "single", 1, (0,), float("nan"))], "no result rows"),
    ],
)
def test_targets_with_little_to_go_on_get_a_plain_sentence(rows, says):
    (adv,) = advise(rows, _members())
    assert says in verdict(adv) and adv.curve is None
    assert advice_lines(adv)[1].startswith("measured: ")


def test_costs_come_from_the_ledger_teachers_included():
    rows = _rows(_known, range(1, 6), 5, 3, noise=0.003)
    rows += [
        _row("wide5", "wide", 5, (0,), _known(5)),
        _row("distill5", "distill", 5, (0,), _known(1)),
        _row("input", "input", 0, (), 0.3),
    ]
    (adv,) = advise(rows, _members())
    secs = {o.column: o.seconds for o in adv.options}
    assert secs["single"] == 2.0 and secs["cat3"] == 6.0 and secs["cat5"] == 10.0
    assert secs["wide5"] == 6.0 and secs["distill5"] == 11.5 and secs["input"] == 0.0
    assert adv.seed_seconds == 2.0
    assert adv.cheapest == "wide5" and adv.option("wide5").within_noise


def test_max_k_advises_as_if_the_run_had_stopped_there():
    rows = _rows(_known, range(1, 9), 10, 4, noise=0.002)
    (adv,) = advise(rows, max_k=5)
    assert adv.ks == (1, 2, 3, 4, 5) and set(adv.ahead) == {6, 10, 20}
    assert {o.column for o in adv.options} == {"single", "cat2", "cat3", "cat4", "cat5"}


def test_a_budget_buys_seeds_measured_or_extrapolated():
    rows = _rows(_known, range(1, 6), 5, 3, noise=0.003)
    (three,) = advise(rows, _members(), budget="3members")
    assert three.budget.seeds == 3 and not three.budget.predicted
    (more,) = advise(rows, _members(), budget="40s")  # 2 s a seed: 20 seeds
    assert more.budget.seeds == 20 and more.budget.predicted
    assert more.budget.per_unit.value == pytest.approx(more.budget.marginal.value / 2.0)


@pytest.mark.parametrize(
    "text, unit, amount",
    [("8members", "members", 8), ("600CPU-seconds", "s", 600), ("0.5gpu-h", "h", 0.5)],
)
def test_budget_forms(text, unit, amount):
    b = parse_budget(text)
    assert (b.unit, b.amount) == (unit, amount)


@pytest.mark.parametrize("text", ["8", "ten members", "-3s", "0members", "2gpu-members", "5x"])
def test_a_malformed_budget_is_refused(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


@pytest.mark.parametrize(
    "kwargs, members, match",
    [
        ({"budget": "1gpu-h"}, _members(), "GPU time but the run's seeds trained on cpu"),
        ({"budget": "60s"}, _members(seconds=0.0), "records no training time"),
        ({"max_k": 0}, (), "--max-k must be at least 1"),
        ({"target": "nope"}, (), "no target 'nope'.*entries are \\['t'\\]"),
        ({"metric": "mAP"}, (), "no 'mAP' result rows"),
    ],
)
def test_bad_input_is_refused_before_any_fit(kwargs, members, match):
    rows = _rows(_known, range(1, 6), 5, 3, noise=0.003)
    with pytest.raises(ConfigError, match=match):
        advise(rows, members, **kwargs)


# ------------------------------------------------------------------------------ a run folder


@pytest.fixture
def folder(tiny, tmp_path):
    """A run folder with constructed rows and ledger records (nothing trained)."""
    tiny["training"]["seeds"] = 5
    tiny["evaluation"] = {"suite": [{"name": "t", "sizes": ["all"]}]}
    exp = parse_experiment(tiny)
    store = RunStore(tmp_path / exp.run_id())
    store.root.mkdir()
    (store.root / "config.yaml").write_text(yaml.safe_dump(exp.model_dump(mode="json")))
    (store.root / "richrep.json").write_text(json.dumps({"format": FORMAT}))
    rows = _rows(_known, range(1, 6), 5, 3, noise=0.003) + [
        _row("random5", "random", 5, range(5), 0.5)
    ]
    write_jsonl(store.results, [r.to_dict() for r in rows])
    ledger = Ledger(store)
    store.checkpoints.mkdir(parents=True)
    for m in _members()[:5]:
        meta = {
            "member": {"name": m.name, "kind": "single", "k": 1, "seed": m.seed, "requires": []},
            "train_seconds": 2.0,
            "encoder_params": 1000,
            "feature_dim": 16,
            "device": "cpu",
        }
        save_tensors(ledger.final(m.name), {"w": torch.zeros(1)}, meta)
    return store.root


def test_cli_advise_results_and_run_api_agree(folder):
    runner = CliRunner()
    r = runner.invoke(app, ["advise", str(folder), "--budget", "10s"])
    assert r.exit_code == 0, r.output
    assert "t · transfer · all: best cat5" in r.output and "curve: f(K)" in r.output
    assert "budget 10s: 5 seeds" in r.output and "a seed trains in 2.0 s on cpu" in r.output
    table = runner.invoke(app, ["results", str(folder)])
    assert table.exit_code == 0, table.output
    assert "What to use" in table.output and "next seed" in table.output
    (adv,) = Run.open(folder).advise()
    assert verdict(adv).split(":")[0] == "t · transfer · all"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--budget", "8"], "give an amount and a unit"),
        (["--budget", "1gpu-h"], "GPU time"),
        (["--target", "nope"], "no target 'nope'"),
        (["--max-k", "0"], "--max-k must be at least 1"),
        (["--metric", "mAP"], "no 'mAP' result rows"),
    ],
)
def test_cli_advise_refuses_bad_input_in_one_line(folder, args, match):
    r = CliRunner().invoke(app, ["advise", str(folder), *args])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert re.search(match, r.output), r.output


def test_cli_advise_on_a_folder_without_results(folder, tmp_path):
    (folder / "results.jsonl").unlink()
    r = CliRunner().invoke(app, ["advise", str(folder)])
    assert r.exit_code == 2 and "has no results.jsonl yet" in r.output
    r = CliRunner().invoke(app, ["advise", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not a richrep run folder" in r.output


def test_report_opens_with_what_to_use(folder):
    from richrep.report.html import render_html
    from richrep.stages.report import report_data

    data = report_data(Run.open(folder))
    assert data.advice and data.advice[0]["verdict"].startswith("t · transfer · all: best")
    page = render_html(data, folder)
    assert page.index("What to use") < page.index("<h2>Summary</h2>")
    assert "next seed" in page


def test_ledger_records_read_finished_sidecars_only(folder):
    store = RunStore(folder)
    ledger = Ledger(store)
    save_tensors(ledger.partial("single-s9"), {"w": torch.zeros(1)}, {"member": {}})
    with open(ledger.final("single-s4"), "ab") as f:  # truncated or grown: size mismatch
        f.write(b"x")
    (store.checkpoints / "stray.json").write_text("{}")
    records = ledger.records()
    assert sorted(records) == [f"single-s{s}" for s in range(4)]
    assert records["single-s0"]["train_seconds"] == 2.0


def test_member_costs_skip_records_richrep_did_not_write(folder):
    from richrep.run import member_costs

    store = RunStore(folder)
    meta = {"member": {"kind": "single", "k": "x", "seed": 9}, "train_seconds": "soon"}
    save_tensors(Ledger(store).final("single-s9"), {"w": torch.zeros(1)}, meta)
    costs = {m.name: m for m in member_costs(store)}
    assert sorted(costs) == [f"single-s{s}" for s in range(5)]
    assert costs["single-s0"].seconds == 2.0 and costs["single-s0"].params == 1000
