"""The terminal fits the terminal: `richrep results` one line per target in the layout of fewest
lines (quickstart-shaped rows, no training), `--columns` and `--transpose`, catK − single for
every K, and `richrep runs` with full run names and the state of unfinished runs."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from richrep import __version__
from richrep.cli import app
from richrep.config import dump_experiment, load_experiment, parse_experiment
from richrep.errors import ConfigError, TrainingError
from richrep.report.columns import resolve_columns
from richrep.report.html import table_view
from richrep.report.tables import build_comparison, to_markdown
from richrep.report.terminal import render_table
from richrep.results import Row
from richrep.store import RunStore, write_jsonl
from richrep.store.ledger import Ledger
from richrep.store.progress import FAILURE, recording, run_state

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart.yaml"
# (entry, protocol, sizes, variants, episodes): the quickstart's suite, 21 targets
TARGETS = [
    ("in_distribution", "transfer", ["all"], [None], 0),
    ("new_classes", "transfer", [10, 100, "all"], [None], 0),
    ("all_classes", "transfer", [100, "all"], [None], 0),
    ("noise", "transfer", ["all"], [None], 0),
    ("noise_robustness", "robustness", ["all"], [None], 0),
    ("shear_robustness", "robustness", ["all"], [None], 0),
    ("translation_robustness", "robustness", ["all"], [None], 0),
    ("few_shot", "few_shot", [1, 5], [None], 20),
    ("finetune_init", "finetune", [10, 100], [None], 0),
    ("finetune_2ft", "finetune", [10, 100], [None], 0),
    ("continual", "continual", ["all"], [f"after task {t}/5" for t in range(1, 6)], 0),
]
# (representation, column, k, level, values per draw: seeds or subsets)
PLAN = [
    ("input", "input", 0, 0.45, 1),
    ("random", "random5", 5, 0.55, 1),
    ("single", "single", 1, 0.66, 5),
    ("cat", "cat2", 2, 0.68, 3),
    ("cat", "cat3", 3, 0.69, 3),
    ("cat", "cat4", 4, 0.70, 3),
    ("cat", "cat5", 5, 0.71, 1),
    ("wide", "wide5", 5, 0.69, 1),
    ("joint", "joint5", 5, 0.67, 1),
    ("distill", "distill5", 5, 0.66, 1),
]


def _replicates():
    """(entry, protocol, size, variant index, variant, draw, episode) of every replicate."""
    for entry, protocol, sizes, variants, episodes in TARGETS:
        for size, (v, variant) in itertools.product(sizes, enumerate(variants)):
            draws = 3 if size != "all" or variant else 1
            for draw, ep in itertools.product(range(draws), range(episodes) or [None]):
                yield entry, protocol, size, v, variant, draw, ep


def quickstart_rows(seed: int = 0) -> list[Row]:
    """Rows shaped like the quickstart's: 5 seeds, 3 subsets of each catK < 5, floors,
    wide5/joint5/distill5, 3 draws at sizes below all (3 orders of the continual stream, whose
    first task is near 1: intervals clipped), few-shot episodes."""
    rng = random.Random(seed)
    rows = []
    for entry, protocol, size, v, variant, draw, ep in _replicates():
        for rep, col, k, level, reps in PLAN:
            if protocol == "finetune" and rep in ("input", "random"):
                continue
            noise = 0.08 if variant else 0.01
            early = 0.25 * (variant is not None and v == 0)
            for s in range(reps):
                value = min(1.0, level + early + rng.gauss(0, noise))
                row = Row(
                    "quickstart-0", entry, protocol, rep, col, k, (s,), 64 * k, 1000 * k,
                    "accuracy", value, 500, size=size, draw=draw, episode=ep, variant=variant,
                )  # fmt: skip
                rows.append(row)
    return rows


@pytest.fixture(scope="module")
def comp():
    order = [t[0] for t in TARGETS]
    return build_comparison(quickstart_rows(), order)


def _render(comp, width, **kw) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_table(comp, width, title="quickstart", **kw))
    return console.export_text().splitlines()


# ------------------------------------------------------------------- compact, fitted layout


def test_quickstart_table_at_80_columns_is_under_60_lines(comp):
    assert len(comp.rows) == 21
    lines = _render(comp, 80)
    assert len(lines) < 60, "\n".join(lines)
    assert all(len(x) <= 80 for x in lines)
    text = "\n".join(lines)
    for name in ("single", "cat5", "wide5", "joint5", "distill5"):
        assert f" {name}" in text
    for gain in ("single", "wide5", "distill5"):  # a gain's head may wrap after "cat5 −"
        assert f"cat5 − {gain}" in text or f" {gain}" in text
    for row in comp.rows:  # one line per target (in each block)
        cell = row.cells["single"]
        assert f"{100 * cell.mean:.1f}±{100 * cell.ci95:.1f}" in text
    assert "±: 95% t half-width" in text and "not shown:" in text
    assert "[" in text and "clipped to [0,100]" in text  # continual's first tasks


def test_every_headline_column_in_one_table_when_wide(comp):
    lines = _render(comp, 200)
    assert len(lines) < 35 and all(len(x) <= 200 for x in lines)
    header = next(x for x in lines if " single " in x)
    for name in ("single", "cat5", "wide5", "joint5", "distill5", "input", "random5"):
        assert f" {name}" in header


@pytest.mark.parametrize("width", [30, 40, 60, 100])
def test_nothing_is_cut_at_any_width(comp, width):
    lines = _render(comp, width, columns=["all"])
    assert all(len(x) <= width for x in lines)
    flat = "".join("".join(lines).split())
    for row in comp.rows:
        for cell in row.cells.values():
            assert f"{100 * cell.mean:.1f}" in flat


def test_columns_select_and_keep_their_order(comp):
    names = resolve_columns([comp], ["cat5,single", "cat5-wide5"])
    assert names == ["cat5", "single", "cat5 − wide5"]
    lines = _render(comp, 80, columns=names)
    body, hidden = "\n".join(lines).split("not shown:")
    assert "joint5" not in body and "distill5" not in body
    header = next(x for x in lines if "cat5" in x and "single" in x)
    assert header.index("cat5") < header.index("single")
    assert "wide5, joint5, distill5 and 5 gains" in hidden
    every = _render(comp, 250, columns=resolve_columns([comp], ["all"]))
    assert "not shown" not in "\n".join(every) and "cat2 − single" in "\n".join(every)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (["singel"], "no column 'singel' (did you mean 'single'?)"),
        (["cat5-wid5"], "no column 'cat5-wid5' (did you mean 'cat5 − wide5'?)"),
        (["single,zzz"], "no column 'zzz'; the tables have: input, random5, single"),
        ([" , "], "give at least one column name"),
    ],
)
def test_unknown_columns_are_named_with_the_nearest(comp, asked, message):
    with pytest.raises(ConfigError, match="--columns") as e:
        resolve_columns([comp], asked)
    assert message in str(e.value)
    assert "cat5-single" in str(e.value) or "at least one" in str(e.value)


def test_transposed_and_row_layouts_on_request(comp):
    flipped = _render(comp, 120, transpose=True, columns=["single", "cat5"])
    body = [x for x in flipped if x.startswith(("single", "cat5"))]
    assert len(body) >= 2  # rows are the columns, the targets head the columns
    assert any("in_distribution" in x for x in flipped[:4])
    rows = _render(comp, 120, transpose=False, columns=["single", "cat5"])
    assert sum(x.startswith("new_classes · 10/class") for x in rows) == 1
    assert not any(x.startswith("single ") for x in rows)


def test_one_target_takes_a_few_lines(comp):
    one = build_comparison([r for r in quickstart_rows() if r.entry == "in_distribution"])
    lines = _render(one, 80)
    assert len(lines) <= 10 and all(len(x) <= 80 for x in lines), "\n".join(lines)


# ------------------------------------------------------------------- catK − single, every K


def test_cat_k_minus_single_for_every_k_and_baselines_of_that_k(comp):
    names = [g.name for g in comp.gain_columns]
    assert names == [
        "cat2 − single",
        "cat3 − single",
        "cat4 − single",
        "cat5 − single",
        "cat5 − wide5",
        "cat5 − distill5",
    ]
    assert comp.k == 5 and [g.name for g in comp.headline_gains] == names[3:]
    row = comp.rows[1]  # new_classes · 10/class: 3 draws
    for k in (2, 3, 4):
        g = row.gains[f"cat{k} − single"]
        assert g.diff == pytest.approx(row.cells[f"cat{k}"].mean - row.cells["single"].mean)
        assert g.method == "paired" and g.n == 3
    md = to_markdown(comp)
    assert all(n in md for n in names)
    view = table_view(comp)
    assert [h["text"] for h in view["head"]][-6:] == names
    headline = comp.headline()["new_classes · transfer · 10/class"]  # the runs index's
    assert set(headline) >= {"gain_single", "gain_wide", "gain_distill"} and headline["k"] == 5
    wide3 = [Row("r", "e", "transfer", "wide", "wide3", 3, (0,), 48, 3000, "accuracy", 0.6, 10)] + [
        r for r in quickstart_rows() if r.entry == "in_distribution"
    ]
    assert "cat3 − wide3" in [g.name for g in build_comparison(wide3).gain_columns]


# ------------------------------------------------------------------- the results command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding the quickstart-shaped rows (no training)."""
    exp = load_experiment(QUICKSTART)
    store = RunStore(tmp_path_factory.mktemp("runs") / exp.run_id())
    store.root.mkdir(parents=True)
    (store.root / "config.yaml").write_text(dump_experiment(exp))
    store.mark_format(__version__)
    write_jsonl(store.results, [r.to_dict() for r in quickstart_rows()])
    return store.root


def test_results_command_fits_80_columns(run_dir):
    r = CliRunner().invoke(app, ["results", str(run_dir)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert all(len(x) <= 80 for x in lines), r.output
    table = lines[: next(i for i, x in enumerate(lines) if x.startswith("What to use"))]
    assert len(table) < 60, r.output  # the headline table; one verdict per target follows
    assert "cat5 −" in r.output and "other forms:" in r.output


def test_results_command_columns_and_transpose(run_dir):
    runner = CliRunner()
    r = runner.invoke(app, ["results", str(run_dir), "--columns", "single,cat5", "--transpose"])
    assert r.exit_code == 0, r.output
    assert any(x.startswith("single ") for x in r.output.splitlines())
    md = runner.invoke(app, ["results", str(run_dir), "--format", "markdown", "--columns", "cat5"])
    assert md.exit_code == 0 and "| target | cat5 |" in md.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--columns", "singel"], "did you mean 'single'?"),
        (["--columns", "single", "--format", "csv"], "--columns applies to the table and markdown"),
        (["--transpose", "--format", "markdown"], "--transpose applies to the table format"),
    ],
)
def test_results_command_refuses_bad_layout_options(run_dir, args, message):
    r = CliRunner().invoke(app, ["results", str(run_dir), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------- richrep runs


def _folder(out: Path, name: str, tiny: dict) -> RunStore:
    store = RunStore(out / name)
    store.root.mkdir(parents=True)
    (store.root / "config.yaml").write_text(dump_experiment(parse_experiment(tiny)))
    return store


def _finish_member(store: RunStore, member: str) -> None:
    store.checkpoints.mkdir(exist_ok=True)
    Ledger(store).final(member).write_bytes(b"x")
    Ledger(store).final(member).with_suffix(".json").write_text("{}")


def test_runs_show_full_names_and_the_state_of_unfinished_runs(tiny, tmp_path):
    out = tmp_path / "runs"
    long = "a-long-experiment-name-for-a-sweep-over-widths-and-k-" + "0123456"
    assert len(long) == 60
    stopped = _folder(out, long, tiny)
    _finish_member(stopped, "single-s0")
    failed = _folder(out, "broken-1", tiny)
    Ledger(failed).record_failure("single-s1", "loss is nan at epoch 2")
    running = _folder(out, "busy-1", tiny)
    (_folder(out, "bad-1", tiny).root / "config.yaml").write_text("name: [unclosed\n")
    with running.lock():
        r = CliRunner().invoke(app, ["runs", str(out)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert long in lines and all(len(x) <= 80 for x in lines)
    assert "stopped in training, 1 member trained (the same command resumes it)" in r.output
    assert "failed before training: member single-s1: loss is nan at epoch 2" in r.output
    assert "running (pid " in r.output
    assert "broken: " in r.output and "notvalidYAML" in "".join(r.output.split())
    r = CliRunner().invoke(app, ["runs", str(out)], env={"COLUMNS": "40"})
    assert long in "".join(r.output.split())  # folded, never cut
    assert "…" not in r.output


def test_a_failed_run_records_why_and_the_next_run_clears_it(tiny, tmp_path, monkeypatch):
    from richrep import pipeline

    def diverge(run, **kw):
        raise TrainingError("single-s0: the loss became nan at epoch 1")

    monkeypatch.setattr(pipeline, "train", diverge)
    exp = parse_experiment(tiny)
    with pytest.raises(TrainingError):
        pipeline.run_experiment(exp, tmp_path, log=lambda m: None)
    store = RunStore(tmp_path / exp.run_id())
    state = run_state(store)
    assert state["state"] == "failed" and "the loss became nan" in state["detail"]
    with recording(store):  # a run stopped before its work (a pre-flight) leaves the record
        pass
    assert run_state(store)["state"] == "failed"
    monkeypatch.setattr(pipeline, "train", lambda run, **kw: None)
    pipeline.run_experiment(exp, tmp_path, only="train", log=lambda m: None)
    assert run_state(store)["state"] == "stopped" and not (store.root / FAILURE).exists()
    Ledger(store).record_failure("single-s0", "x")  # not the run's own record
    with pytest.raises(KeyboardInterrupt), recording(store):
        (store.root / "config.yaml").write_text((store.root / "config.yaml").read_text() + "\n")
        raise KeyboardInterrupt  # a run that got to work and was interrupted: a stop
    assert not (store.root / FAILURE).exists()
    assert run_state(store)["detail"] == "before training: member single-s0: x"
    (store.root / "done").write_text("{}")
    assert run_state(store) == {"state": "complete", "detail": ""}
