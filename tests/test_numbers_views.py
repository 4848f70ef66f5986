"""Numbers that mean what they say: intervals are views (never metrics), a degenerate interval is
"no interval" and never coloured, a bounded metric's interval stays in its bounds, the OOD
summary leads with worst-environment accuracy, and every view says what "±" means."""

from __future__ import annotations

import math
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import parse_experiment
from richrep.pipeline import run_experiment
from richrep.report.html import ReportData, render_html, table_view
from richrep.report.ood_tables import ood_summary_lines, ood_table, table_rows
from richrep.report.summary import summary_lines
from richrep.report.tables import (
    build_comparison,
    caption,
    derived_note,
    metrics,
    to_markdown,
)
from richrep.report.terminal import render_table
from richrep.results import Row
from richrep.results.stats import summarize, welch_interval
from richrep.stages.evaluate import read_results
from richrep.stages.report import report
from richrep.store import write_jsonl


def _row(col, kind, k, value, *, metric="accuracy", seed=0, draw=0, entry="e", **kw):
    return Row(
        run="r-0",
        entry=entry,
        protocol=kw.pop("protocol", "transfer"),
        representation=kind,
        column=col,
        k=k,
        seeds=(seed,),
        dim=8 * max(k, 1),
        params=100 * max(k, 1),
        metric=metric,
        value=value,
        n=100,
        draw=draw,
        **kw,
    )


def _data(rows, protocol="transfer"):
    entries = list(dict.fromkeys(r.entry for r in rows))
    return ReportData(
        name="x", run_id="x-0", rows=rows, entries=entries,
        entry_protocols={e: protocol for e in entries},
    )  # fmt: skip


def _plain(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


# ------------------------------------------------------------ 2: degenerate intervals


def _orders(cat, single, orders=3, seeds=(0,)):
    """Continual-like rows: one value per order (``draw``), ``cat`` and ``single`` per order."""
    rows = []
    for d in range(orders):
        rows.append(_row("cat2", "cat", 2, cat[d], draw=d))
        for s in seeds:
            rows.append(_row("single", "single", 1, single[d], seed=s, draw=d))
    return rows


@pytest.mark.parametrize(
    ("cat", "single", "why"),
    [
        ([0.8, 0.8, 0.8], [0.7, 0.7, 0.7], "3 equal values"),  # three orders, one classifier
        ([0.8], [0.7], "n=1"),  # one value on each side
    ],
)
def test_equal_values_or_one_value_give_no_interval_and_no_colour(cat, single, why, tmp_path):
    rows = _orders(cat, single, orders=len(cat))
    comp = build_comparison(rows)
    (row,) = comp.rows
    c = row.cells["cat2"]
    assert c.ci95 is None and f"no interval ({why})" == c.ci_text()
    assert c.text() == f"0.800 (n={len(cat)}, no interval)"
    assert comp.best(row) == set()  # the highest mean, but nothing to stand clear with
    g = row.gains["cat2 − single"]
    assert g.ci95 is None and not g.significant and "no interval" in g.text()
    view = table_view(comp)
    assert all(x["cls"] not in ("best", "pos", "neg") for x in view["rows"][0]["cells"])
    assert "± 0.000" not in to_markdown(comp) and "**" not in to_markdown(comp).split("\n", 3)[3]
    console = Console(width=120, record=True, color_system="truecolor")
    console.print(render_table(comp, 120))
    out = console.export_text()
    assert "± 0.000" not in out and "no interval" in out
    assert "\x1b[1;32m" not in console.export_text(styles=True)  # no bold green
    page = render_html(_data(rows), tmp_path)
    assert 'class="pos"' not in page and 'class="neg"' not in page
    assert '<td class="best"' not in page and "± 0.000" not in page


def test_a_difference_equal_on_every_order_has_no_interval():
    """cat2 and single vary over orders, but by the same amount on each: paired, no interval."""
    comp = build_comparison(_orders([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]))
    g = comp.rows[0].gains["cat2 − single"]
    assert g.method == "paired" and g.ci95 is None and not g.significant
    assert g.ci_text() == "no interval (the same difference on all 3 draws)"
    assert comp.rows[0].cells["cat2"].ci95 is not None  # each side has an interval


@pytest.mark.parametrize(
    ("values", "finite"), [([0.5], False), ([0.3, 0.3, 0.3], False), ([0.3, 0.4], True)]
)
def test_summarize_gives_an_interval_only_from_distinct_values(values, finite):
    s = summarize(values)
    assert math.isfinite(s["ci95"]) == finite
    assert s["std"] == 0.0 or finite


def test_welch_without_spread_is_no_interval():
    assert welch_interval(0.8, 0.0, 3, 0.7, 0.0, 3) is None  # equal values on both sides
    assert welch_interval(0.8, 0.0, 1, 0.7, 0.0, 4) is None  # one value against equal values
    assert welch_interval(0.8, 0.0, 3, 0.7, 0.1, 3) is not None


@pytest.mark.parametrize(
    ("metric", "clipped"),
    [("accuracy", True), ("average_incremental_accuracy", True), ("top1", True),
     ("compatibility_margin", False)],
)  # fmt: skip
def test_a_bounded_metrics_interval_stays_in_its_bounds(metric, clipped):
    """0.702 ± 0.536 over three orders would reach 1.237: an accuracy's interval is clipped to
    [0, 1] (and shown as bounds, the footer says so); an unbounded metric's is not."""
    rows = [_row("single", "single", 1, v, draw=d, metric=metric)
            for d, v in enumerate([0.95, 0.90, 0.256])]  # fmt: skip
    comp = build_comparison(rows, metric=metric)
    c = comp.rows[0].cells["single"]
    assert round(c.mean, 3) == 0.702 and round(c.ci95, 3) == 0.961
    assert c.clipped == clipped
    if clipped:
        assert (c.low, c.high) == (0.0, 1.0)
        assert c.text() == "0.702 [0.000, 1.000] (n=3)"
        assert "clipped to [0, 1]" in c.ci_text()
        assert "clipped and shown as [low, high]" in caption(comp)
    else:
        assert c.high > 1 and c.text() == "0.702 ± 0.961 (n=3)"
        assert "clipped" not in caption(comp)


# ------------------------------------------------- 1 and 2 on real rows (few-shot, continual)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A tiny run with a few-shot and a continual entry, its results.jsonl then given the rows an
    older richrep stored as metrics (accuracy_ci95, diff_vs_single)."""
    from tests.conftest import TINY

    cfg = {**TINY, "name": "numbers", "runtime": {"threads": 1}}
    cfg["training"] = {**TINY["training"], "epochs": 1}
    keep = [{"classes": {"keep": [5, 6, 7, 8, 9]}}]
    cfg["evaluation"] = {"subsets": 1, "suite": [
        {"name": "fs", "shifts": keep,
         "protocol": {"few_shot": {"episodes": 12, "shots": [1], "queries": 5}}},
        {"name": "stream", "shifts": keep,
         "protocol": {"continual": {"classes_per_task": 1, "orders": 3}}},
    ]}  # fmt: skip
    run = run_experiment(parse_experiment(cfg), tmp_path_factory.mktemp("old"), log=lambda m: 0)
    rows = [r.to_dict() for r in read_results(run)]
    fs = [r for r in rows if r["entry"] == "fs" and r["metric"] == "accuracy"]
    assert fs and {r["metric"] for r in rows} == {"accuracy", "average_incremental_accuracy"}
    for col in dict.fromkeys(r["column"] for r in fs):  # what the older few_shot wrote
        base = next(r for r in fs if r["column"] == col)
        for metric in ("accuracy_ci95", "diff_vs_single"):
            rows.append({**base, "metric": metric, "value": 0.0, "episode": None})
    write_jsonl(run.store.results, rows)
    return run


def test_old_pseudo_metric_rows_are_ignored_with_a_message(old_run, tmp_path):
    rows = read_results(old_run)
    assert "accuracy_ci95" not in metrics(rows) and "diff_vs_single" not in metrics(rows)
    assert build_comparison(rows, metric="accuracy_ci95").rows == []
    note = derived_note(rows)
    assert note is not None and "accuracy_ci95, diff_vs_single" in note
    r = CliRunner().invoke(app, ["results", str(old_run.store.root)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "ignored" in r.output and "accuracy_ci95" in r.output.split("ignored")[1]
    assert "test accuracy_ci95" not in r.output and "test diff_vs_single" not in r.output
    report(old_run, log=lambda m: None)
    page = old_run.store.report.read_text()
    assert "ignored" in page and "accuracy_ci95 · full table" not in page
    plots = {p.name for p in (old_run.store.root / "plots").iterdir()}
    assert not any("ci95" in p or "diff_vs" in p for p in plots)


def test_few_shot_cells_are_means_over_episodes_with_n_episodes(old_run):
    rows = read_results(old_run)
    comp = build_comparison([r for r in rows if r.entry == "fs"])
    (row,) = comp.rows
    assert {c.n for c in row.cells.values()} == {12}  # 2 seeds, 12 episodes: n = 12
    assert {c.unit for c in row.cells.values()} == {"episodes"}
    assert "few-shot episodes, each averaged over seeds" in caption(comp)


def test_identical_continual_orders_show_no_interval_and_no_colour(old_run):
    """One class per task: after task 1 every order scores 1.0; at the end every order has
    the same classifier. Neither gives an interval, a best, or a coloured gain."""
    rows = read_results(old_run)
    comp = build_comparison([r for r in rows if r.entry == "stream"])
    first, last = comp.rows[0], comp.rows[-1]
    assert first.target.variant == "after task 1/5" and last.target.variant == "after task 5/5"
    for row in (first, last):
        cat = row.cells["cat2"]
        assert cat.n == 3 and cat.ci95 is None and "no interval" in cat.text()
        assert comp.best(row) == set()
        assert all(g is None or not g.significant for g in row.gains.values())
    for row in comp.rows:
        for c in row.cells.values():
            assert 0.0 <= c.low <= c.mean <= c.high <= 1.0
    first_view = table_view(comp)["rows"][0]["cells"]  # all 1.0: not even "within noise"
    assert all(x["cls"] in ("", "ns") for x in first_view)
    (line,) = summary_lines(comp)  # the stream's end speaks, not its trivial first task
    assert line.startswith("stream (continual, all, after task 5/5): cat2 reaches")
    assert "100.0 %" not in line


# ------------------------------------------------------------------------ 3: the OOD summary


def _ood_rows():
    """Colour agrees with the label in e=0.1: high accuracy there, the worst is e=0.9."""
    out = []
    for col, kind, k, base in (("single", "single", 1, 0.10), ("cat2", "cat", 2, 0.30)):
        for alg in ("erm", "irm"):
            for rule in ("train-domain", "oracle"):
                for seed in (0, 1, 2):
                    v = base + (0.05 if alg == "irm" else 0.0) + 0.01 * seed
                    common = {"protocol": "ood", "entry": "ood", "variant": f"{alg} · {rule}"}
                    out.append(_row(col, kind, k, v, metric="worst_env_accuracy", seed=seed,
                                    **common))  # fmt: skip
                    for env, d in (("test e=0.9", 0.0), ("test e=0.1", 0.78)):
                        out.append(_row(col, kind, k, v + d, seed=seed, environment=env, **common))
    return out


def test_the_ood_summary_leads_with_worst_environment_accuracy_per_rule(tmp_path):
    rows = _ood_rows()
    lines = ood_summary_lines(rows, ["ood"])
    assert len(lines) == 2  # one per selection rule
    assert lines[0].startswith("ood (ood; worst test-environment accuracy, train-domain selection)")
    assert lines[1].startswith("ood (ood; worst test-environment accuracy, oracle selection)")
    assert (
        "with erm, cat2 reaches 31.0 %" in lines[0] and "with irm, cat2 reaches 36.0 %" in lines[0]
    )
    assert "beats single by 20.0 points" in lines[0]
    page = _plain(render_html(_data(rows, "ood"), tmp_path))
    summary = page.split(" Summary ")[1].split(" Setup ")[0]
    assert "cat2 reaches 31.0 %" in summary and "worst test-environment accuracy" in summary
    assert "109.0" not in summary and "reaches 109" not in summary  # not the e=0.1 level


def test_the_accuracy_table_of_an_ood_entry_is_its_worst_environment_per_rule(tmp_path):
    rows = _ood_rows()
    comp = build_comparison(table_rows(rows))
    labels = [r.label for r in comp.rows]
    assert len(labels) == 4  # 2 algorithms × 2 rules, no environment rows
    assert all(lab.endswith("env worst") for lab in labels)
    assert comp.rows[0].cells["cat2"].mean == pytest.approx(0.31)
    env = ood_table(rows, "ood", "accuracy")
    assert {r.target.environment for r in env.rows} == {"test e=0.9", "test e=0.1"}
    page = _plain(render_html(_data(rows, "ood"), tmp_path))
    results = page.split(" Results ")[1].split(" Out of distribution ")[0]
    assert "env test e=0.1" not in results and "env worst" in results
    ood = page.split(" Out of distribution ")[1]
    assert "accuracy per test environment · train-domain selection" in ood
    assert "erm · test e=0.1" in ood


# ------------------------------------------------------------------ 4: one meaning for "±"


def test_every_view_says_what_plus_minus_means(tmp_path):
    r = CliRunner().invoke(app, ["results", "--help"], env={"COLUMNS": "200"})
    text = " ".join(r.output.split())
    assert "95% Student-t interval" in text and "std" not in text
    assert "mean ± 95% half-width (n)" in text
    rows = _ood_rows()
    comp = build_comparison(table_rows(rows))
    for shown in (caption(comp), to_markdown(comp)):
        assert "± half-width of the 95% Student-t interval" in shown
    page = render_html(_data(rows, "ood"), tmp_path)
    assert "± std" not in page and "mean ± std" not in page
    assert page.count("95% Student-t interval") >= 3  # results, OOD, against-K, captions
