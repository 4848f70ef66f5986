"""The report reads at a glance (lead figure and headline table first, full tables collapsed,
figures in a grid, one unit), every figure is written as PNG, SVG and PDF, and
``richrep.report.figures`` redraws each from a DataFrame of the rows."""

from __future__ import annotations

import copy
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pandas as pd  # the dev extra installs it
import pytest
from tests.conftest import TINY
from tests.test_report import _data, _members, _row, suite

from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.pipeline import run_experiment
from richrep.report import figures
from richrep.report.html import write_report
from richrep.report.tables import to_csv


class _Outline(HTMLParser):
    """Where each tag opens, with its classes and the tags it sits in."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.seen: list[tuple[str, str, tuple[str, ...], int]] = []  # tag, class, parents, pos
        self.text: list[tuple[str, int]] = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        self.seen.append((tag, cls, tuple(self.stack), len(self.seen)))
        if tag not in ("br", "img", "meta"):
            self.stack.append(f"{tag}.{cls}" if cls else tag)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop().split(".")[0] == tag:
                break

    def handle_data(self, data):
        if data.strip():
            self.text.append((data.strip(), len(self.seen)))


def _outline(page: str) -> _Outline:
    p = _Outline()
    p.feed(page)
    return p


def _continual_rows():
    rows = []
    for col, rep, k, base in (("single", "single", 1, 0.6), ("cat3", "cat", 3, 0.7)):
        for order in range(3):
            for t in range(1, 6):
                v = base - 0.05 * t + 0.01 * order
                rows.append(
                    _row("stream", rep, col, k, v, draw=order, protocol="continual",
                         variant=f"after task {t}/5")
                )  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("glance")
    rows = suite(draws=3)
    path = write_report(_data(rows, _members(["single-s0", "single-s1"])), out)
    return out, path.read_text()


def test_lead_figure_and_headline_table_come_first_and_full_tables_collapse(page):
    out, html = page
    o = _outline(html)
    first = {}
    for tag, cls, _, pos in o.seen:
        first.setdefault((tag, cls), pos)
    heads = [t for t, _ in o.text]
    assert heads.index("At a glance") < heads.index("Summary") < heads.index("Results")
    lead = next(p for t, c, parents, p in o.seen if t == "figure" and c == "lead")
    assert any("section.glance" in parents for t, c, parents, _ in o.seen if c == "lead")
    assert lead < first[("table", "headline")] < first[("details", "table")]
    tables = [parents for t, c, parents, _ in o.seen if t == "table" and c == "comparison"]
    assert tables and all("details.table" in parents for parents in tables)
    assert "open" not in html.split('<details class="table"')[1].split(">")[0]
    assert "display:grid" in html and "minmax(min(100%,400px),1fr)" in html  # a grid
    assert (out / "plots" / "lead-accuracy.png").exists()


def test_one_unit_in_summary_and_tables(page):
    _, html = page
    assert "in percent in this report" in html
    assert "beats single by" in html and " points" in html  # the summary speaks in points
    o = _outline(html)
    cells = [t for t, _ in o.text if "±" in t and t[0].isdigit()]
    assert cells and all(float(c.split()[0]) > 1 for c in cells)  # 80.0, never 0.800
    assert "source val acc (%)" in html and "<td>80.0</td>" in html


def test_headline_row_per_target(page):
    _, html = page
    table = html.split('<table class="headline">')[1].split("</table>")[0]
    for head in ("single", "best catK", "wide5", "distill5", "input", "random5", "cat5 − wide5"):
        assert f"<th>{head}</th>" in table, head
    assert table.count("<tr>") == 1 + 2  # the head, new_classes and in_dist at size all
    assert "cat5" in table and 'class="pos"' in table  # which catK; a clear gain coloured
    assert "± half-width of its 95% Student-t interval" in table


def test_every_figure_written_as_png_svg_and_pdf(page):
    out, html = page
    plots = sorted((out / "plots").iterdir())
    pngs = [p for p in plots if p.suffix == ".png"]
    assert len(pngs) >= 4 and len(plots) == 3 * len(pngs)
    for p in pngs:
        assert p.with_suffix(".svg").read_text()[:200].lstrip().startswith("<?xml")
        assert p.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        assert f'href="plots/{p.stem}.svg"' in html and f'href="plots/{p.stem}.pdf"' in html
    again = out / "again"
    write_report(_data(suite(draws=3), _members(["single-s0", "single-s1"])), again)
    for p in pngs:  # no date in the vector files: the same figure gives the same bytes
        for ext in (".svg", ".pdf"):
            assert (again / "plots" / (p.stem + ext)).read_bytes() == p.with_suffix(
                ext
            ).read_bytes()


def _lines(ax):
    return [(tuple(ln.get_xdata()), tuple(ln.get_ydata())) for ln in ax.get_lines()]


@pytest.mark.parametrize("how", ["rows", "frame", "csv"])
def test_figures_redraw_from_a_dataframe(how):
    rows = suite(draws=3) + _continual_rows()
    data = {
        "rows": rows,
        "frame": pd.DataFrame([r.to_dict() for r in rows]),
        "csv": pd.read_csv(io.StringIO(to_csv(rows))),  # richrep results --format csv
    }[how]
    ax = figures.accuracy_vs_k(data, "new_classes")
    want = figures.accuracy_vs_k(rows, "new_classes")
    assert _lines(ax) == _lines(want) and len(ax.get_lines()) > 5
    fig = figures.lead_figure(data)
    assert [a.get_title() for a in fig.axes if a.get_visible()] == [
        "new_classes\ntransfer · all",
        "in_dist\ntransfer · all",
    ]  # the stream (continual) is not drawn against K
    cont = figures.protocol_figure(data, "stream")
    assert [t.get_text() for t in cont.axes[0].get_legend().get_texts()] == [
        "single (n=3)",
        "cat3 (n=3)",
    ]
    fig, ax = plt.subplots()
    assert figures.accuracy_vs_k(data, "in_dist", ax=ax) is ax  # draws where it is told
    plt.close("all")


def _markers_x(ax):
    """x of the baselines' markers (open markers, no line)."""
    return [
        float(x)
        for ln in ax.get_lines()
        if ln.get_linestyle() == "None" and ln.get_markerfacecolor() in ("white", (1, 1, 1, 1))
        for x in ln.get_xdata()
    ]


def test_baseline_markers_at_one_k_do_not_overlap():
    rows = suite(draws=3)
    rows += [_row(e, "joint", "joint5", 5, 0.74, draw=d) for e in ("new_classes", "in_dist")
             for d in range(3)]  # fmt: skip
    for ax in [figures.accuracy_vs_k(rows, "new_classes"), *figures.lead_figure(rows).axes]:
        if not ax.get_visible() or not ax.get_lines():
            continue
        xs = _markers_x(ax)
        at5 = sorted({round(x, 6) for x in xs if 5 <= x < 6})
        # wide5, joint5, distill5 (and of both sizes, 10 and all, but joint5, in one entry's own)
        assert len(at5) == (5 if ax.get_title().startswith("new_classes —") else 3)
        assert min(at5) > 5 and len(xs) == len({round(x, 6) for x in xs})  # no two at one x
    plt.close("all")


def test_k_and_task_axes_have_integer_ticks():
    rows = suite(draws=3) + _continual_rows()
    axes = [figures.accuracy_vs_k(rows, "new_classes"), *figures.lead_figure(rows).axes]
    axes.append(figures.protocol_figure(rows, "stream").axes[0])
    for ax in axes:
        if ax.get_visible() and ax.get_lines():
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close("all")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda df: figures.accuracy_vs_k(df.drop(columns=["column"]), "in_dist"), "column"),
        (lambda df: figures.accuracy_vs_k("results.jsonl", "in_dist"), "got str"),
        (lambda df: figures.accuracy_vs_k([{"entry": "in_dist"}], "in_dist"), "lacks"),
        (lambda df: figures.accuracy_vs_k(df.assign(value="high"), "in_dist"), "not a number"),
        (lambda df: figures.accuracy_vs_k(df, "nope"), "entry 'nope'"),
        (lambda df: figures.accuracy_vs_k(df, "in_dist", metric="top5"), "no 'top5' rows"),
        (lambda df: figures.lead_figure(df, ["in_dist", "nope"]), "entry 'nope'"),
        (lambda df: figures.ood_environments(df, "in_dist", rule="best"), "selection rule"),
    ],
)
def test_bad_figure_input_is_named(call, message):
    df = pd.DataFrame([r.to_dict() for r in suite(draws=2)])
    with pytest.raises(ConfigError, match=message):
        call(df)


# ------------------------------------------------------------------------ a real tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    t = copy.deepcopy(TINY)
    t["training"]["baselines"] = [{"kind": "wide", "k": 2}]
    t["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [
            {"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [10, "all"]},
            {"name": "same", "shifts": [{"classes": {"keep": [0, 1, 2, 3, 4]}}]},
        ],
    }
    out = tmp_path_factory.mktemp("tiny")
    return run_experiment(parse_experiment(t), out, log=lambda m: None).store.root


def test_tiny_run_report_reads_at_a_glance(tiny_run):
    html = (tiny_run / "report.html").read_text()
    o = _outline(html)
    assert [c for t, c, _, _ in o.seen if t == "figure"][0] == "lead"
    assert "run <code>richrep analyze RUN</code>" in html
    names = {p.name for p in (tiny_run / "plots").iterdir()}
    for stem in ("lead-accuracy", "accuracy_vs_k-new", "accuracy_vs_k-same", "training_curves"):
        assert {stem + ext for ext in (".png", ".svg", ".pdf")} <= names, stem


def _chromium() -> str | None:
    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )


@pytest.mark.parametrize("size", [(1440, 900), (1024, 768)])
def test_tiny_run_report_in_a_browser(tiny_run, tmp_path, size):
    """Headless Chromium renders the page at desktop and laptop widths (the screenshots of
    benchmarks/report_screenshots.py are to look at; this checks they are produced)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):  # CI installs chromium (.ci/run): its absence is a failure
            raise AssertionError("no chromium on the PATH")
        pytest.skip("needs chromium (apt-get install chromium)")
    from PIL import Image

    shot = tmp_path / "shot.png"
    w, h = size
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={w},{h}",
         f"--screenshot={shot}", (tiny_run / "report.html").resolve().as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    im = Image.open(shot).convert("L")
    assert im.size == (w, h)
    top = im.crop((0, int(0.25 * h), w, h))  # below the title: the lead figure, not blank
    lo, hi = top.getextrema()
    assert hi - lo > 100 and len(set(top.getdata())) > 20
