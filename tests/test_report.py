"""The comparison table, its terminal/markdown/HTML renderings and the report, on synthetic rows
(no training)."""

from __future__ import annotations

import math
import random
import re
from html.parser import HTMLParser

import pytest
from rich.console import Console

from richrep.report.html import ReportData, write_report
from richrep.report.plots import save_training_curves
from richrep.report.summary import summary_lines
from richrep.report.tables import build_comparison, metrics, to_csv, to_markdown
from richrep.report.terminal import render_table
from richrep.results import Row
from richrep.results.stats import aggregate, paired_difference, welch_interval


def _row(entry, rep, col, k, value, *, seed=0, draw=0, size="all", metric="accuracy", **kw):
    return Row(
        run="r-0",
        entry=entry,
        protocol=kw.pop("protocol", "transfer"),
        representation=rep,
        column=col,
        k=k,
        seeds=(seed,),
        dim=kw.pop("dim", 64 * max(k, 1)),
        params=kw.pop("params", 1000 * max(k, 1)),
        metric=metric,
        value=value,
        n=1000,
        size=size,
        draw=draw,
        **kw,
    )


def suite(entries=("new_classes", "in_dist"), draws=3, sizes=(10, "all"), seed=0, **shift):
    """Every kind at several K, a few seeds/subsets and draws, with noise ~0.01."""
    rng = random.Random(seed)
    rows = []
    plan = [
        ("input", "input", 0, 0.50, 1),
        ("random", "random5", 5, 0.55, 1),
        ("single", "single", 1, 0.70, 5),
        ("cat", "cat3", 3, 0.76, 3),
        ("cat", "cat5", 5, 0.80, 1),
        ("wide", "wide3", 3, 0.74, 1),
        ("wide", "wide5", 5, 0.76, 1),
        ("distill", "distill5", 5, 0.75, 1),
    ]
    for e in entries:
        for size in sizes:
            for d in range(draws):
                for rep, col, k, base, reps in plan:
                    for s in range(reps):
                        v = base + shift.get(col, 0.0) + rng.gauss(0, 0.01)
                        rows.append(_row(e, rep, col, k, v, seed=s, draw=d, size=size))
    return rows


# ------------------------------------------------------------------------------ statistics


def test_aggregate_reads_rows_and_groups_by_metric():
    rows = [
        _row("a", "single", "single", 1, 0.5, seed=0),
        _row("a", "single", "single", 1, 0.7, seed=1),
        _row("a", "single", "single", 1, 0.1, seed=0, metric="worst_group_accuracy"),
    ]
    (acc,) = aggregate(rows, ["entry", "column"])
    assert acc["mean"] == pytest.approx(0.6) and acc["n"] == 2 and acc["metric"] == "accuracy"
    both = {a["metric"]: a for a in aggregate(rows, ["entry", "column"], metric=None)}
    assert set(both) == {"accuracy", "worst_group_accuracy"}
    assert both["worst_group_accuracy"]["n"] == 1
    dicts = [{"metric": "accuracy", "value": v, "g": "x"} for v in (1.0, 3.0)]
    assert aggregate(dicts, ["g"])[0]["mean"] == 2.0


def test_paired_and_welch_intervals():
    a = {0: [0.80], 1: [0.82], 2: [0.78]}
    b = {0: [0.70], 1: [0.72], 2: [0.68]}
    p = paired_difference(a, b)
    assert p["mean"] == pytest.approx(0.10) and p["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert p["n"] == 3 and p["method"] == "paired"
    assert paired_difference({0: [1.0]}, {0: [0.0]}) is None  # one shared draw: no interval
    w = welch_interval(2.0, 1.0, 3, 0.0, 1.0, 3)  # equal variances: df = 4
    assert w["mean"] == 2.0 and w["ci95"] == pytest.approx(2.776445 * math.sqrt(2 / 3), rel=1e-5)
    assert welch_interval(1.0, 0.0, 1, 0.5, 0.0, 1) is None
    one = welch_interval(1.0, 0.0, 1, 0.5, 0.1, 5)  # one value: varies like the other side
    assert one is not None and one["ci95"] > 0


# ------------------------------------------------------------------------------ the table


def test_columns_ordered_by_kind_then_k():
    comp = build_comparison(suite(), ["in_dist", "new_classes"])
    assert comp.columns == [
        "input",
        "random5",
        "single",
        "cat3",
        "cat5",
        "wide3",
        "wide5",
        "distill5",
    ]
    assert [r.target.entry for r in comp.rows] == ["in_dist"] * 2 + ["new_classes"] * 2
    assert [r.target.size for r in comp.rows][:2] == [10, "all"]


def test_cells_carry_n_and_interval():
    comp = build_comparison(suite(draws=3))
    row = comp.rows[0]
    assert row.cells["single"].n == 15  # 5 seeds × 3 draws
    assert row.cells["cat3"].n == 9 and row.cells["cat5"].n == 3
    c = row.cells["single"]
    assert c.ci95 is not None and c.low < c.mean < c.high
    assert c.text() == f"{c.mean:.3f} ± {c.ci95:.3f} (n=15)"
    one = build_comparison(suite(draws=1)).rows[0].cells["cat5"]
    assert one.n == 1 and one.ci95 is None and one.text() == f"{one.mean:.3f} (n=1, no interval)"


def test_gains_compare_the_same_k():
    comp = build_comparison(suite())
    assert comp.k == 5
    names = [g.name for g in comp.headline_gains]
    assert names == ["cat5 − single", "cat5 − wide5", "cat5 − distill5"]
    assert [g.name for g in comp.gain_columns] == ["cat3 − single", "cat3 − wide3", *names]
    g = comp.rows[0].gains["cat5 − wide5"]
    cells = comp.rows[0].cells
    assert g.diff == pytest.approx(cells["cat5"].mean - cells["wide5"].mean)
    assert g.method == "paired" and g.n == 3
    # without wide5, the largest K with both cat and wide is 3: cat3 − wide3, never cat5 − wide3
    rows = [r for r in suite() if r.column != "wide5"]
    comp = build_comparison(rows)
    assert comp.k == 3
    assert [g.name for g in comp.headline_gains] == ["cat3 − single", "cat3 − wide3"]
    names = ["cat3 − single", "cat3 − wide3", "cat5 − single", "cat5 − distill5"]
    assert [g.name for g in comp.gain_columns] == names


def test_gain_significant_only_when_its_interval_excludes_zero():
    clear = build_comparison(suite(draws=4))
    g = clear.rows[0].gains["cat5 − single"]  # +0.10 with noise 0.01
    assert g.significant and g.low > 0
    close = build_comparison(suite(draws=4, cat5=-0.04))  # cat5 0.76 vs wide5 0.76
    g = close.rows[0].gains["cat5 − wide5"]
    assert g.low < 0 < g.high and not g.significant
    lone = build_comparison(suite(draws=1, sizes=("all",)))
    g = lone.rows[0].gains["cat5 − wide5"]  # one value on each side
    assert g.ci95 is None and g.method == "none" and not g.significant
    g = lone.rows[0].gains["cat5 − single"]  # one value against five seeds: Welch
    assert g.method == "welch" and g.ci95 is not None


def test_best_not_claimed_within_noise():
    comp = build_comparison(suite(draws=4))
    row = comp.rows[0]
    assert comp.top(row) == "cat5" and comp.best(row) == {"cat5"}
    tied = build_comparison(suite(draws=4, wide5=0.04))  # wide5 0.80 = cat5 0.80
    row = tied.rows[0]
    assert tied.best(row) == set() and {"cat5", "wide5"} <= tied.tied(row)
    single_value = build_comparison(suite(draws=1)).rows[0]  # top has n=1: no claim
    assert build_comparison(suite(draws=1)).best(single_value) == set()


def test_rows_of_another_metric_are_ignored():
    rows = suite(draws=2)
    wga = [
        _row("new_classes", "cat", "cat5", 5, 0.1, draw=d, metric="worst_group_accuracy")
        for d in range(2)
    ]
    acc = build_comparison(rows + wga)
    assert acc.rows[1].cells["cat5"].n == 2 and acc.rows[1].cells["cat5"].mean > 0.7
    assert metrics(rows + wga) == ["accuracy", "worst_group_accuracy"]
    other = build_comparison(rows + wga, metric="worst_group_accuracy")
    assert other.columns == ["cat5"] and other.rows[0].cells["cat5"].mean == pytest.approx(0.1)


def test_markdown_and_csv():
    comp = build_comparison(suite(draws=4, entries=("a|b",)))
    md = to_markdown(comp)
    lines = md.splitlines()
    assert "| target | input |" in md and "cat5 − wide5" in md
    assert "a\\|b" in md  # a pipe in an entry does not break the table
    body = [x for x in lines if x.startswith("| a")]
    assert len(body) == 2 and all(x.count(" | ") == lines[2].count(" | ") for x in body)
    assert "**" + comp.rows[0].gains["cat5 − single"].text() + "**" in md
    assert "(n=4)" in md and "dim / params" in md
    csv_text = to_csv(suite(draws=1, entries=("=cmd",)))
    assert "'=cmd" in csv_text.splitlines()[1]


def test_summary_sentences_state_gains_with_intervals():
    comp = build_comparison(suite(draws=4, cat5=-0.04), ["new_classes", "in_dist"])
    lines = summary_lines(comp, ["new_classes", "in_dist"], {"new_classes": "transfer"})
    assert len(lines) == 2 and lines[0].startswith("new_classes (transfer, all)")
    assert "beats single by" in lines[0] and "95% CI" in lines[0]
    assert "within noise of wide5" in lines[0]


# ------------------------------------------------------------------------------ terminal


@pytest.mark.parametrize("width", [80, 250])
def test_terminal_table_fits_and_shows_every_mean(width):
    comp = build_comparison(suite(draws=3), ["new_classes", "in_dist"])
    console = Console(width=width, record=True, color_system=None)
    console.print(render_table(comp, width, title="demo", columns=["all"]))
    out = console.export_text()
    assert "…" not in out
    assert all(len(line) <= width for line in out.splitlines())
    for r in comp.rows:  # in percent, gains in points
        for cell in r.cells.values():
            assert f"{100 * cell.mean:.1f}" in out
        for g in r.gains.values():
            assert f"{100 * g.diff:+.1f}" in out
    assert "--format markdown" in out


def test_terminal_very_narrow_and_untrusted_text():
    rows = suite(draws=2, entries=("[bold red]x[/] \x1b[31mevil\x1b[0m\x07",))
    comp = build_comparison(rows)
    console = Console(width=40, record=True, color_system=None)
    console.print(render_table(comp, 40, title="[blink]t", columns=["all"], transpose=False))
    out = console.export_text()
    assert "[bold red]x[/]" in out  # shown literally, never parsed as markup
    assert "\x1b" not in out and "\x07" not in out
    for cell in comp.rows[0].cells.values():
        assert f"{100 * cell.mean:.1f}" in out


# ------------------------------------------------------------------------------ HTML report

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "div", "span",
    "table", "thead", "tbody", "tr", "th", "td", "caption", "code", "pre", "details", "summary",
    "img", "ul", "li", "small", "br", "dl", "dt", "dd", "figure", "figcaption", "section", "a",
}  # fmt: skip
EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def _history(n=4, shift=0.0):
    return [
        {"epoch": e, "loss": 1.0 / (e + shift), "train_acc": 0.5 + 0.1 * e, "seconds": 0.1}
        for e in range(1, n + 1)
    ]


def _analysis(names):
    k = len(names)
    sim = [[1.0 if i == j else 0.7 for j in range(k)] for i in range(k)]
    dist = [[0.0 if i == j else 0.9 for j in range(k)] for i in range(k)]
    return {
        "split": "test",
        "n": 500,
        "seeds": list(range(k)),
        "members": names,
        "measures": {"linear_cka": sim, "procrustes": dist},
        "random_measures": {"linear_cka": sim, "procrustes": dist},
        "self": {"linear_cka": 1.0, "procrustes": 0.0},
        "matching": {
            "pair": names[:2],
            "one_to_one": [0.9, 0.5, 0.2],
            "semi": [0.95, 0.6, 0.3],
            "random_one_to_one": [0.3, 0.1, 0.0],
        },
        "sparse_prediction": {
            "pair": names[:2],
            "alphas": [1e-3, 1e-2, 1e-1],
            "nse": [0.2, 0.5, 0.9],
            "nonzero": [30, 10, 1],
        },
        "spectral": {"pair": names[:2], "n_clusters": 4, "n_mixed": 3, "sizes": [2, 2, 2, 2]},
        "permutation_test": {
            "pair": names[:2],
            "measure": "linear_cka",
            "observed": 0.7,
            "p_value": 0.005,
            "null_mean": 0.1,
            "n_permutations": 200,
        },
        "warnings": [],
    }


def _data(rows, members, analysis=None, **kw):
    entries = list(dict.fromkeys(r.entry for r in rows))
    return ReportData(
        name=kw.get("name", "demo"),
        run_id=kw.get("run_id", "demo-0123"),
        rows=rows,
        entries=entries,
        entry_protocols={e: kw.get("protocol", "transfer") for e in entries},
        chance={e: 0.1 for e in entries},
        intro=kw.get("intro", {"encoder": "mlp", "dataset": "mnist1d", "seeds": 5, "epochs": 2}),
        members=members,
        analysis=analysis,
        config_text=kw.get("config_text", "name: demo\n"),
        env=kw.get("env", {"torch": "2"}),
        warnings=kw.get("warnings", []),
    )


def _members(names, failed=()):
    out = []
    for i, n in enumerate(names):
        m = {
            "name": n,
            "kind": "single",
            "k": 1,
            "seed": i,
            "status": "failed" if n in failed else "finished",
            "error": "boom" if n in failed else None,
            "encoder_params": 1000,
            "feature_dim": 64,
            "val_acc": 0.8,
            "train_seconds": 1.5,
            "precision": "fp32",
            "device": "cpu",
            "history": [] if n in failed else _history(shift=i),
        }
        out.append(m)
    return out


def _check_tags(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    assert p.tags
    for tag, attrs in p.tags:
        assert tag in ALLOWED_TAGS, tag
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            if name == "src":
                assert value.startswith("data:image/png;base64,"), value[:40]
            if name == "href":  # a figure's SVG or PDF beside the report
                assert re.fullmatch(r"plots/[A-Za-z0-9_.-]+\.(svg|pdf)", value), value
    return p


def test_html_escapes_hostile_input(tmp_path):
    rows = suite(draws=2, entries=(EVIL,))
    rows += [_row(EVIL, EVIL, EVIL, 5, 0.5, draw=d, metric=EVIL, protocol=EVIL) for d in range(2)]
    names = [EVIL, "ok-s1", "bad-s2"]
    members = _members(names, failed=("bad-s2",))
    members[0]["device"] = EVIL
    members[0]["precision"] = EVIL
    members[0]["seed"] = EVIL
    members[2]["error"] = EVIL + "\nTraceback"
    analysis = _analysis(names)
    analysis["measures"][EVIL] = analysis["measures"]["linear_cka"]
    analysis["warnings"] = [EVIL]
    analysis["split"] = EVIL
    analysis["matching"]["pair"] = [EVIL, EVIL]
    data = _data(
        rows,
        members,
        analysis,
        name=EVIL,
        run_id=EVIL,
        config_text=EVIL,
        env={EVIL: EVIL},
        warnings=[EVIL],
        intro={"encoder": EVIL, "dataset": EVIL, EVIL: EVIL},
    )
    page = (write_report(data, tmp_path)).read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page.lower()
    assert "&lt;script&gt;" in page
    _check_tags(page)
    assert all(p.parent == tmp_path / "plots" for p in (tmp_path / "plots").iterdir())


@pytest.mark.slow
def test_report_renders_with_and_without_analysis(tmp_path):
    rows = suite(draws=3)
    names = ["single-s0", "single-s1", "single-s2"]
    members = _members(names, failed=("single-s2",))
    plain = write_report(_data(rows, members), tmp_path / "a").read_text()
    _check_tags(plain)
    assert "Are the seeds different?" not in plain
    assert "run <code>richrep analyze RUN</code>" in plain  # says what would add the section
    assert "cat5 − wide5" in plain and "beats single by" in plain
    assert "boom" in plain and "n=15 · [" in plain  # n and the interval under the mean
    assert 'class="pos"' in plain  # a significant gain is coloured
    full = write_report(_data(rows, members, _analysis(names)), tmp_path / "b").read_text()
    _check_tags(full)
    assert "Are the seeds different?" in full and "linear_cka" in full
    assert "richrep analyze RUN" not in full
    plots = {p.name for p in (tmp_path / "b" / "plots").iterdir()}
    assert {"seed_similarity.png", "unit_matching.png", "training_curves.png"} <= plots
    assert any(p.startswith("accuracy_vs_k-") for p in plots)
    pngs = [p for p in plots if p.endswith(".png")]
    assert full.count("data:image/png;base64,") == len(pngs)
    assert {p[:-4] + ext for p in pngs for ext in (".svg", ".pdf")} <= plots


def test_training_curves_plot_written(tmp_path):
    members = _members(["single-s0", "single-s1", "wide$3"])
    members[0]["history"] = [{**h, "val_acc": 0.6} for h in members[0]["history"]]
    path = save_training_curves(members, tmp_path / "curves.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_training_curves([{"name": "x", "history": []}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_report_of_one_value_cells(tmp_path):
    """One draw, one seed subset: no intervals, no best claimed, the report still renders."""
    rows = suite(draws=1, sizes=("all",))
    page = write_report(_data(rows, []), tmp_path).read_text()
    _check_tags(page)
    assert "no interval" in page and '<td class="best"' not in page
    assert math.isfinite(build_comparison(rows).rows[0].cells["cat5"].mean)
