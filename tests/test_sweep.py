"""Overrides (``KEY=VALUE`` after the experiment file) and sweeps (``--sweep KEY=V1,V2``): the
grammar, errors that name the override, the run identity and record, and a 2 × 2 sweep side by
side in ``richrep runs``."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from typer.testing import CliRunner

import richrep
from richrep.cli import app
from richrep.config import parse_experiment
from richrep.config.overrides import (
    apply_overrides,
    experiment_with,
    parse_axis,
    parse_override,
    split_values,
)
from richrep.errors import ConfigError
from richrep.store.origin import ORIGIN, read_origin
from richrep.sweeps import plan_sweep, sweep_groups

SUITE = [{"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [10], "draws": 1}]


def fast(tiny):
    """The tiny experiment with one epoch and a one-entry suite, on one thread."""
    tiny["training"]["epochs"] = 1
    tiny["evaluation"] = {"subsets": 1, "probe": {"Cs": [0.1, 1.0]}, "suite": SUITE}
    tiny["runtime"] = {"threads": 1}
    return tiny


@pytest.mark.parametrize(
    ("text", "op", "path", "value"),
    [
        ("training.epochs=3", "set", ("training", "epochs"), 3),
        ("training.lr=0.5", "set", ("training", "lr"), 0.5),
        ("model.encoder=cnn", "set", ("model", "encoder"), "cnn"),
        ("model.params.hidden=[256, 256]", "set", ("model", "params", "hidden"), [256, 256]),
        ("data.params={a: 1}", "set", ("data", "params"), {"a": 1}),
        ("model.pretrained=null", "set", ("model", "pretrained"), None),
        ("evaluation.cache_features=false", "set", ("evaluation", "cache_features"), False),
        ("name=a=b", "set", ("name",), "a=b"),
        ("name=", "set", ("name",), ""),
        ("name='3'", "set", ("name",), "3"),
        ("+data.max_train_per_class=50", "add", ("data", "max_train_per_class"), 50),
        ("++training.epochs=2", "force", ("training", "epochs"), 2),
        ("~training.lr", "delete", ("training", "lr"), None),
        ("evaluation.suite.0.sizes=[5]", "set", ("evaluation", "suite", "0", "sizes"), [5]),
    ],
)
def test_an_override_is_a_dotted_key_and_a_yaml_value(text, op, path, value):
    o = parse_override(text)
    assert (o.op, o.path, o.value) == (op, path, value)
    assert type(o.value) is type(value)


def test_overrides_set_nested_keys_list_items_add_and_delete(tiny):
    tiny["evaluation"] = {"suite": copy.deepcopy(SUITE)}
    raw, paths = apply_overrides(
        tiny,
        [
            "training.epochs=3",
            "model.params.hidden=[64, 64]",
            "evaluation.suite.new.sizes=[5, 10]",
            "evaluation.suite.0.draws=2",
            "+evaluation.suite.1={name: old, shifts: [{classes: {keep: [0, 1]}}]}",
            "+data.max_train_per_class=50",
            "~training.lr",
            "~training.batch_size=64",
            "runtime.threads=1",  # the file has no runtime section: it is made
            "++training.precision=fp32",
        ],
    )
    assert raw["training"]["epochs"] == 3 and "lr" not in raw["training"]
    assert "batch_size" not in raw["training"]
    assert raw["model"]["params"] == {"hidden": [64, 64], "feature_dim": 16}
    assert raw["evaluation"]["suite"][0]["sizes"] == [5, 10]
    assert raw["evaluation"]["suite"][0]["draws"] == 2
    assert raw["evaluation"]["suite"][1]["name"] == "old"
    assert raw["data"]["max_train_per_class"] == 50 and raw["runtime"] == {"threads": 1}
    assert paths[2] == "evaluation.suite.0.sizes"  # a named item resolves to its index
    assert tiny["training"]["epochs"] == 2  # the input is not changed
    exp = parse_experiment(raw)
    assert exp.training.lr == 0.05 and exp.training.batch_size == 128  # the defaults again


BAD = [
    ("training.epoch=3", ["'training.epoch=3'", "unknown key 'epoch'", "did you mean 'epochs'"]),
    ("trainin.epochs=3", ["'trainin.epochs=3'", "did you mean 'training'"]),
    ("training.epochs=abc", ["training.epochs", "valid integer", "'training.epochs=abc'"]),
    ("training.epochs=0", ["greater than or equal to 1", "'training.epochs=0'"]),
    ("model.params.hiden=[3]", ["did you mean 'hidden'", "'model.params.hiden=[3]'"]),
    ("model.encoder=mpl", ["did you mean 'mlp'", "'model.encoder=mpl'"]),
    ("training.epochs", ["'training.epochs' is not KEY=VALUE"]),
    ("=3", ["is not a dotted key"]),
    ("training..epochs=3", ["is not a dotted key"]),
    ("training.epochs=[1", ["'training.epochs=[1' is not valid YAML"]),
    ("evaluation.suite.3.sizes=[1]", ["evaluation.suite has no item 3", "0 to 0"]),
    ("evaluation.suite.nwe.sizes=[1]", ["no item named 'nwe'", "did you mean 'new'"]),
    ("+training.epochs=3", ["training.epochs is already in the experiment"]),
    ("~training.momentum", ["no training.momentum to delete"]),
    ("~training.epochs=7", ["training.epochs is 2, not 7; not deleted"]),
    ("training.epochs.x=1", ["training.epochs is 2, not a mapping"]),
    ("~runtime.threads", ["no runtime to delete from"]),
]


@pytest.mark.parametrize(("override", "fragments"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_override_is_refused_naming_it(tiny, override, fragments):
    tiny["evaluation"] = {"suite": copy.deepcopy(SUITE)}
    with pytest.raises(ConfigError) as e:
        experiment_with(tiny, [override], "exp.yaml")
    for f in fragments:
        assert f in str(e.value)


def test_overrides_change_the_identity_as_the_file_would_and_runtime_ones_do_not(tiny):
    edited = copy.deepcopy(tiny)
    edited["training"]["epochs"] = 3
    edited["model"]["params"]["feature_dim"] = 8
    made = experiment_with(tiny, ["training.epochs=3", "model.params.feature_dim=8"])
    assert made.run_id() == parse_experiment(edited).run_id()
    assert made.run_id() != parse_experiment(tiny).run_id()
    threads = experiment_with(tiny, ["runtime.threads=1", "runtime.device=cpu"])
    assert threads.run_id() == parse_experiment(tiny).run_id()


@pytest.mark.parametrize(
    ("text", "key", "values"),
    [
        ("training.seeds=2,3", "training.seeds", [2, 3]),
        ("model.params.hidden=[64],[128,128]", "model.params.hidden", [[64], [128, 128]]),
        ("data.params={a: 1, b: 2},null", "data.params", [{"a": 1, "b": 2}, None]),
        ("name='a,b',c", "name", ["a,b", "c"]),
        ("training.lr=0.1", "training.lr", [0.1]),
        ("+data.max_train_per_class=5,10", "data.max_train_per_class", [5, 10]),
    ],
)
def test_a_sweep_axis_splits_at_commas_outside_brackets_and_quotes(text, key, values):
    a = parse_axis(text)
    assert (a.key, list(a.values)) == (key, values)
    assert split_values("[1,2],{a: [3,4]},'x,y'") == ["[1,2]", "{a: [3,4]}", "'x,y'"]


BAD_SWEEPS = [
    (["training.seeds=2,,3"], [], "an empty value between commas"),
    (["training.seeds"], [], "is not KEY=V1,V2"),
    (["~training.seeds=2,3"], [], "is not KEY=V1,V2"),
    (["training.seeds=2,2"], [], "the value 2 is given twice"),
    (["training.seeds=2,3", "training.seeds=4,5"], [], "swept twice"),
    (
        ["training.seeds=2,3"],
        ["training.seeds=4"],
        "both overridden ('training.seeds=4') and swept",
    ),
    (["training.epoch=1,2"], [], "did you mean 'epochs'"),
    (["training.epochs=1,0"], [], "sweep combination training.epochs=0"),
    (["runtime.threads=1,2"], [], "are the same run"),
    (["evaluation.subsets=1,2"], [], "are the same run"),
    ([], [], "at least one"),
]


@pytest.mark.parametrize(("axes", "overrides", "fragment"), BAD_SWEEPS)
def test_a_bad_sweep_is_refused_before_any_run(tiny, tmp_path, axes, overrides, fragment):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    with pytest.raises(ConfigError) as e:
        plan_sweep(cfg, axes, overrides)
    assert fragment in str(e.value)
    r = CliRunner().invoke(
        app,
        ["run", str(cfg), *overrides, "--out", str(tmp_path / "runs")]
        + [a for x in axes for a in ("--sweep", x)],
    )
    if axes:
        assert r.exit_code == 2 and not (tmp_path / "runs").exists(), r.output


@pytest.mark.parametrize(
    ("axes", "fragment"),
    [
        ({"training.seeds": 5}, "give a list of values to sweep over, got 5"),
        ({"training.seeds": []}, "no values to sweep over"),
        ({"~training.seeds": [1, 2]}, "a sweep sets a key"),
        ({"training.seeds=1": [1, 2]}, "without '='"),
        ({"training.seeds": [[1, 2], [1, 2]]}, "the value [1, 2] is given twice"),
    ],
)
def test_the_python_sweep_refuses_bad_axes(tiny, axes, fragment):
    with pytest.raises(ConfigError) as e:
        plan_sweep(parse_experiment(tiny), axes)
    assert fragment in str(e.value)


def test_a_bad_override_on_the_command_line_is_named_before_any_work(tiny, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = CliRunner().invoke(app, ["run", str(cfg), "training.epoch=3", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "did you mean 'epochs'" in r.output
    assert "'training.epoch=3'" in r.output and not (tmp_path / "o").exists()


def test_run_experiment_applies_and_records_overrides(tiny, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(fast(tiny)))
    overrides = ["model.params.feature_dim=8", "runtime.threads=1"]
    run = richrep.run_experiment(cfg, tmp_path / "runs", overrides=overrides, log=lambda m: None)
    edited = copy.deepcopy(tiny)
    edited["model"]["params"]["feature_dim"] = 8
    assert run.store.root.name == parse_experiment(edited).run_id()
    stored = yaml.safe_load((run.store.root / "config.yaml").read_text())
    assert stored["model"]["params"]["feature_dim"] == 8
    record = json.loads((run.store.root / ORIGIN).read_text())
    assert record["overrides"] == overrides and record["experiment"] == str(cfg.absolute())
    assert record["sweeps"] == []


def _table(output: str, title: str) -> list[list[str]]:
    """The rows (cells) of the rich table titled ``title`` in ``output``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith(("│", "┃")):
            rows.append([c.strip() for c in line.strip("│┃").split("│" if "│" in line else "┃")])
    return rows


@pytest.mark.slow  # end to end (seconds): CI's slow tier keeps it
def test_a_two_by_two_sweep_lands_side_by_side_in_richrep_runs(tiny, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(fast(tiny)))
    out = tmp_path / "runs"
    runner, wide = CliRunner(), {"COLUMNS": "250"}
    axes = ["--sweep", "training.seeds=2,3", "--sweep", "model.params.feature_dim=8,16"]
    r = runner.invoke(app, ["run", str(cfg), "--out", str(out), *axes], env=wide)
    assert r.exit_code == 0, r.output
    (group,) = sweep_groups(out)
    assert group.keys == ["training.seeds", "model.params.feature_dim"]
    combos = [
        (x["values"]["training.seeds"], x["values"]["model.params.feature_dim"]) for x in group.runs
    ]
    assert combos == [(2, 8), (2, 16), (3, 8), (3, 16)]
    assert len({x["run_id"] for x in group.runs}) == 4
    assert all(x["row"] is not None and x["row"]["headline"] for x in group.runs)
    first = read_origin(out / group.runs[0]["run_id"])
    assert first["overrides"] == ["training.seeds=2", "model.params.feature_dim=8"]

    listing = runner.invoke(app, ["runs", str(out), "--sweep", group.id], env=wide)
    assert listing.exit_code == 0, listing.output
    header, *rows = _table(listing.output, f"sweep {group.id} (4 runs)")
    assert header[:3] == ["seeds", "feature_dim", "run"] and "catK" in header
    assert [(row[0], row[1]) for row in rows] == [("2", "8"), ("2", "16"), ("3", "8"), ("3", "16")]
    assert [row[2] for row in rows] == [x["run_id"] for x in group.runs]
    assert all(row[header.index("catK")] for row in rows)
    default = runner.invoke(app, ["runs", str(out)], env=wide)
    assert f"sweep {group.id} (4 runs)" in default.output  # grouped without asking

    # a failing combination does not stop the next (a finished run, reused), which joins a
    # second sweep; the summary names each state and the command fails
    again = ["--sweep", "training.lr=1e30,0.05", "training.seeds=2", "model.params.feature_dim=8"]
    r = runner.invoke(app, ["run", str(cfg), "--out", str(out), *again], env=wide)
    assert r.exit_code == 1, r.output
    assert "the training loss became nan" in r.output and "1 of 2 runs failed" in r.output
    groups = sweep_groups(out)
    assert [len(g.runs) for g in groups] == [4, 2]
    assert groups[1].runs[1]["run_id"] == group.runs[0]["run_id"]
    assert len(read_origin(out / group.runs[0]["run_id"])["sweeps"]) == 2
    listing = runner.invoke(app, ["runs", str(out), "--sweep", groups[1].id], env=wide)
    assert "not finished" in listing.output
    missing = runner.invoke(app, ["runs", str(out), "--sweep", group.id[:-1]], env=wide)
    assert missing.exit_code == 2 and f"did you mean '{group.id}'" in missing.output


def test_the_python_sweep_takes_values_and_returns_each_outcome(tiny, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(fast(tiny)))
    result = richrep.sweep(
        cfg,
        {"model.params.hidden": [[8], [16]]},
        out=tmp_path / "runs",
        overrides=["training.seeds=2"],
        log=lambda m: None,
    )
    assert [o.state for o in result.outcomes] == ["done", "done"]
    assert [o.combination.overrides[-1] for o in result.outcomes] == [
        "model.params.hidden=[8]",
        "model.params.hidden=[16]",
    ]
    assert [o.run.exp.model.params["hidden"] for o in result.outcomes] == [[8], [16]]
    assert result.failed == []
