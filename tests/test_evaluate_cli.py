"""A researcher's own loop: evaluate a finished run on a new target (``richrep evaluate RUN
--entry …``, ``Run.evaluate(..., save=True)``), kept as the run's own when its experiment runs
again; an npz shaped like the run's inputs loads as such, with environments."""

from __future__ import annotations

import copy
import json
import shutil
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import SuiteEntry, parse_experiment
from richrep.config.entries import merge_extras
from richrep.data import load_task
from richrep.errors import ConfigError, DataError
from richrep.pipeline import run_experiment
from richrep.run import open_run

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _signals(n: int, seed: int, classes: range) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D signals of ``classes`` as ``(n, 1, 40)`` float32 (the shape `kind: auto` used to
    read as a grey image)."""
    from richrep.data.mnist1d import generate

    x, y = generate(4 * n, seed, 2e-2, 0.25, 0.75, 48, 0.4)
    keep = np.isin(y, list(classes))
    return x[keep][:n], y[keep][:n]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny MNIST-1D run (classes 0-4, one suite entry) and its experiment file."""
    from tests.conftest import TINY

    tiny = copy.deepcopy(TINY)
    tiny["evaluation"] = {"subsets": 1, "floors": ["input"], "suite": [{"name": "in"}]}
    tiny["runtime"] = {"threads": 1}
    base = tmp_path_factory.mktemp("finished")
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    run = run_experiment(parse_experiment(tiny), base / "runs", log=lambda m: None)
    x, y = _signals(200, 7, range(5, 10))
    np.savez(base / "mine.npz", x=x, y=y)
    return cfg, run.store.root, base / "mine.npz"


@pytest.fixture
def run_copy(finished, tmp_path):
    cfg, root, npz = finished
    out = tmp_path / "runs"
    shutil.copytree(root, out / root.name)
    return cfg, out, out / root.name, npz


def _mine(npz, **kw) -> str:
    return json.dumps({"name": "mine", "dataset": "npz", "params": {"path": str(npz)}, **kw})


def _rows(root) -> list[dict]:
    return [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow  # end to end (seconds): CI's slow tier keeps it
def test_evaluate_a_run_on_my_npz_and_keep_it(run_copy):
    cfg, out, root, npz = run_copy
    r = _invoke("evaluate", root, "--entry", _mine(npz, sizes=[10, "all"]))
    assert r.exit_code == 0, r.output
    assert "mine" in r.output and "cat2" in r.output  # the new entry's table
    assert {x["entry"] for x in _rows(root)} == {"in", "mine"}
    assert "mine" in (root / "report.html").read_text()
    table = _invoke("results", root, "--format", "csv")
    assert table.exit_code == 0 and "mine" in table.output
    df = open_run(root).results()
    assert set(df["entry"]) == {"in", "mine"} and {"value", "column", "test_split"} <= set(df)
    assert set(open_run(root).results("mine")["size"]) == {10, "all"}
    n = len(_rows(root))
    # the original experiment, run again: complete, and the extra entry is still the run's
    again = _invoke("run", cfg, "--out", out)
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert len(_rows(root)) == n
    again = _invoke("run", cfg, "--out", out, "--only", "evaluate")
    assert again.exit_code == 0 and "mine: reused" in again.output, again.output
    assert {x["entry"] for x in _rows(root)} == {"in", "mine"} and len(_rows(root)) == n
    # dropped: its rows stay in results/, left out of the views with a message saying so
    gone = _invoke("evaluate", root, "--drop", "mine")
    assert gone.exit_code == 0 and "extra entries of" in gone.output, gone.output
    assert {x["entry"] for x in _rows(root)} == {"in"}
    note = _invoke("results", root)
    assert "left out" in note.output and "--entry" in note.output and "mine" in note.output
    back = note.output[note.output.index("--entry '") + 9 :].split("'")[0]
    assert _invoke("evaluate", root, "--entry", back).exit_code == 0
    assert {x["entry"] for x in _rows(root)} == {"in", "mine"} and len(_rows(root)) == n


def test_run_evaluate_saves_where_the_command_does(run_copy):
    _, _, root, npz = run_copy
    run = open_run(root)
    entry = {"name": "mine", "dataset": "npz", "params": {"path": str(npz)}, "sizes": [5]}
    kept = run.evaluate(entry)  # save=False (the default): nothing is written
    assert not run.store.extra_entries.exists() and {x["entry"] for x in _rows(root)} == {"in"}
    rows = run.evaluate(entry, save=True)
    assert [r.to_dict() for r in rows] == [r.to_dict() for r in kept]
    assert [e.name for e in open_run(root).suite] == ["in", "mine"]
    assert {x["entry"] for x in _rows(root)} == {"in", "mine"}
    assert len(open_run(root).results("mine")) == len(rows)
    with pytest.raises(ConfigError, match="every representation"):
        run.evaluate(entry, representations=["single"], save=True)
    with pytest.raises(ConfigError, match="already an extra entry"):
        run.evaluate({**entry, "sizes": [10]}, save=True)
    assert open_run(root).extra_entries[0].sizes == [5]  # the refused entry left no trace


CLASH = [
    ("{name: in, sizes: [5]}", "experiment suite", "sizes"),
    ("{name: mine, sizes: [5]}", "already an extra entry", "--replace"),
]


@pytest.mark.parametrize("new,first,second", CLASH)
def test_a_name_clash_is_refused_before_any_work(run_copy, new, first, second):
    _, _, root, _ = run_copy
    extra = SuiteEntry(name="mine", sizes=["all"])
    (root / "extra_entries.yaml").write_text(yaml.safe_dump({"suite": [extra.model_dump()]}))
    before = sorted(p.name for p in (root / "results").iterdir())
    r = _invoke("evaluate", root, "--entry", new)
    assert r.exit_code == 2 and first in r.output and second in r.output, r.output
    assert sorted(p.name for p in (root / "results").iterdir()) == before


def test_replace_swaps_an_extra_entry_only_when_asked():
    suite = [SuiteEntry(name="in")]
    old, new = SuiteEntry(name="mine"), SuiteEntry(name="mine", sizes=[5])
    assert merge_extras(suite, [old], [new], replace=True) == [new]
    assert merge_extras(suite, [old], [old]) == [old]  # the same entry: nothing to add
    assert merge_extras(suite, [], [SuiteEntry(name="in")]) == []  # the suite's own
    with pytest.raises(ConfigError, match="unique"):
        merge_extras(suite, [], [new, new])


BAD_ENTRIES = [
    ("[1, 2]", "is a mapping like"),
    ("{nmae: mine}", "did you mean 'name'"),
    ("{name: mine, sizes: [0]}", "sizes.0"),
    ("{name: mine, protocol: nope}", "nope"),
    ("{name: mine, dataset: npz, params: {path: /nonexistent.npz}}", "does not exist"),
    ("{name: mine, dataset: npz, params: {path: x.npz, kind: grey}}", "kind"),
    ("{name: 'mine: 1'", "line"),
]


@pytest.mark.parametrize("text,message", BAD_ENTRIES)
def test_a_bad_entry_is_one_clear_error(run_copy, text, message):
    _, _, root, _ = run_copy
    r = _invoke("evaluate", root, "--entry", text)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (root / "extra_entries.yaml").exists()


def test_two_entries_of_one_name_are_refused(run_copy, tmp_path):
    _, _, root, _ = run_copy
    suite = tmp_path / "extra.yaml"
    suite.write_text("suite:\n  - {name: twice}\n")
    r = _invoke("evaluate", root, "--entry", "{name: twice, sizes: [5]}", "--suite", suite)
    assert r.exit_code == 2 and "twice" in r.output, r.output


def test_kind_follows_the_run_input_shape(finished, tmp_path):
    _, root, npz = finished
    run = open_run(root)
    x, y = _signals(100, 3, range(10))
    for name, arr in {"flat": x[:, 0], "grey": x[:, :, None], "signal": x}.items():
        np.savez(tmp_path / f"{name}.npz", x=arr, y=y)
        task = load_task("npz", {"path": str(tmp_path / f"{name}.npz")}, like=run.source_task)
        assert task.input_shape == (1, 40) and task.kind == "signal", name
    entry = SuiteEntry(name="mine", dataset="npz", params={"path": str(npz), "kind": "image"})
    with pytest.raises(DataError, match=r"\(1, 1, 40\).*\(1, 40\).*kind: image"):
        run.target(entry)


ENV = [
    ({"env": "e", "env_test": "et"}, None),
    ({"domains": "e", "domains_test": "et"}, None),
    ({"env": "e", "domains": "e"}, "not both"),
    ({"env": "short"}, "env must have shape"),
    ({"env": "float"}, "environment ids"),
]


@pytest.mark.parametrize("arrays,error", ENV)
def test_env_arrays_land_in_split_env(tmp_path, arrays, error):
    rng = np.random.default_rng(0)
    y, yt = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    values = {
        "e": np.arange(60) % 2,
        "et": np.arange(30) % 3 + 2,
        "short": np.zeros(5, dtype=int),
        "float": np.full(60, 0.5),
    }
    data = {"x": rng.normal(size=(60, 4)), "y": y, "x_test": rng.normal(size=(30, 4)), "y_test": yt}
    np.savez(tmp_path / "e.npz", **data, **{k: values[v] for k, v in arrays.items()})
    if error:
        with pytest.raises(DataError, match=error):
            load_task("npz", {"path": str(tmp_path / "e.npz")})
        return
    task = load_task("npz", {"path": str(tmp_path / "e.npz")})
    assert task.test.env.tolist() == values["et"].tolist()
    pool = sorted(task.train.env.tolist() + task.val.env.tolist())
    assert pool == sorted(values["e"].tolist())


def test_env_is_carved_with_the_test_split(tmp_path):
    x, y = np.arange(80.0)[:, None], np.repeat(np.arange(2), 40)
    np.savez(tmp_path / "e.npz", x=x, y=y, env=np.arange(80) % 4)
    task = load_task("npz", {"path": str(tmp_path / "e.npz")})
    for s in (task.train, task.val, task.test):  # each example keeps its own environment
        assert (s.env == s.x[:, 0].long() % 4).all()


def test_an_unknown_array_is_named_in_a_warning(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((20, 3)), y=np.arange(20) % 2, labels=np.zeros(20))
    with pytest.warns(UserWarning, match=r"ignored array\(s\) \['labels'\]"):
        load_task("npz", {"path": str(tmp_path / "u.npz")})


def test_results_without_pandas_names_the_extra(monkeypatch):
    from richrep.results.frame import rows_frame

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"richrep\[data\]"):
        rows_frame([])


def test_a_kept_entry_whose_data_is_gone_says_how_to_drop_it(run_copy, tmp_path):
    cfg, out, root, _ = run_copy
    gone = SuiteEntry(name="mine", dataset="npz", params={"path": str(tmp_path / "gone.npz")})
    (root / "extra_entries.yaml").write_text(yaml.safe_dump({"suite": [gone.model_dump()]}))
    r = _invoke("run", cfg, "--out", out)
    assert r.exit_code == 2 and "gone.npz does not exist" in r.output, r.output
    assert "extra entry mine" in r.output and "--drop mine" in r.output
    assert _invoke("evaluate", root, "--drop", "mine").exit_code == 0
    assert _invoke("run", cfg, "--out", out).exit_code == 0
