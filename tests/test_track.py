"""Experiment tracking (``runtime.track: mlflow``): a tiny run logged to MLflow's local file
store and read back with MLflow's own client; a rerun logs nothing new; another tracking URI
gets its own run; a missing MLflow and a misspelt tracker fail before any work."""

from __future__ import annotations

import json
import os
import sys

import pytest
from mlflow.tracking import MlflowClient  # the dev extra installs it (richrep[track])
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import parse_experiment
from richrep.errors import ConfigError, StoreError
from richrep.pipeline import run_experiment
from richrep.stages.report import members_info
from richrep.stages.track import flatten, key
from richrep.stages.trackers.mlflow_tracker import shown
from richrep.store import read_jsonl


def _tracked(tiny, track):
    tiny["runtime"] = {"threads": 1, "track": track}
    tiny["evaluation"] = {
        "subsets": 1,
        "floors": ["input"],
        "suite": [{"name": "t", "sizes": [5, "all"], "draws": 2}],
    }
    return parse_experiment(tiny)


def _runs(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def test_mlflow_reads_back_the_run(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "runs"
    run = run_experiment(_tracked(tiny, "mlflow"), out, log=lambda s: None)
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set only while richrep logs
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the file store back
    uri = (out / "mlruns").resolve().as_uri()
    client, (logged,) = _runs(uri, "tiny")
    data = logged.data
    assert logged.info.run_name == run.store.root.name and logged.info.status == "FINISHED"
    assert data.tags["richrep.run_id"] == run.store.root.name
    assert data.params["training.lr"] == "0.05" and data.params["model.encoder"] == "mlp"
    assert data.params["evaluation.suite.0.sizes"] == '[5, "all"]'
    assert data.params["runtime.threads"] == "1" and not any("track" in p for p in data.params)
    loss = client.get_metric_history(logged.info.run_id, "member/single-s0/loss")
    history = members_info(run)[0]["history"]
    assert [(m.step, m.value) for m in loss] == [(h["epoch"], h["loss"]) for h in history]
    cells: dict[str, list[float]] = {}  # each table cell's rows, in the file's order
    for r in read_jsonl(run.store.results):
        cells.setdefault(f"t/{r['column']}/{r['metric']}/size-{r['size']}", []).append(r["value"])
    assert len(cells) == 6 and max(len(v) for v in cells.values()) == 4  # single: 2 seeds × 2
    for name, values in cells.items():
        assert data.metrics[f"{name}/mean"] == pytest.approx(sum(values) / len(values))
        each = client.get_metric_history(logged.info.run_id, f"{name}/values")
        assert [m.value for m in sorted(each, key=lambda m: m.step)] == (
            values if len(values) > 1 else []
        )
    files = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"report.html", "config.yaml", "env.json", "results.jsonl", "plots"} <= files
    plots = {a.path for a in client.list_artifacts(logged.info.run_id, "plots")}
    assert "plots/training_curves.png" in plots

    run_experiment(_tracked(tiny, "mlflow"), out, log=lambda s: None)  # nothing new
    assert len(_runs(uri, "tiny")[1]) == 1
    client.delete_run(logged.info.run_id)  # gone from MLflow: logged again
    run_experiment(_tracked(tiny, "mlflow"), out, log=lambda s: None)
    assert len(_runs(uri, "tiny")[1]) == 1

    elsewhere = (tmp_path / "elsewhere").resolve().as_uri()  # any URI, its own experiment
    spec = {"mlflow": {"tracking_uri": elsewhere, "experiment": "mine"}}
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # a user's file store: MLflow's own rule
    with pytest.raises(StoreError, match=f"MLflow at {elsewhere}: .*MLFLOW_ALLOW_FILE_STORE"):
        run_experiment(_tracked(tiny, spec), out, log=lambda s: None)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    again = run_experiment(_tracked(tiny, spec), out, log=lambda s: None)  # no retraining
    assert again.store.root == run.store.root  # runtime is not part of the run's identity
    (other,) = _runs(elsewhere, "mine")[1]
    assert other.data.metrics == data.metrics
    assert set(json.loads(run.store.tracking.read_text())) == {f"{uri}#tiny", f"{elsewhere}#mine"}


def test_missing_mlflow_fails_before_any_work(tiny, tmp_path, monkeypatch):
    for name in ("mlflow", "mlflow.exceptions", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # `import mlflow` raises ImportError
    exp = _tracked(tiny, "mlflow")
    with pytest.raises(ConfigError, match=r"pip install 'richrep\[track\]'"):
        run_experiment(exp, tmp_path / "runs", log=lambda s: None)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("track", "message"),
    [
        ("mlfow", r"runtime.track: unknown tracker 'mlfow' \(did you mean 'mlflow'\?\)"),
        (
            {"mlflow": {"tracking_url": "x"}},
            r"argument 'tracking_url' \(did you mean 'tracking_uri'\?\)",
        ),
        ({"mlflow": {"experiment": ""}}, r"argument 'experiment'='' is invalid"),
        ({"mlflow": "x"}, r"arguments of 'mlflow' must be a mapping"),
    ],
)
def test_bad_tracker_specs_are_named(tiny, track, message):
    tiny["runtime"] = {"track": track}
    with pytest.raises(ConfigError, match=message):
        parse_experiment(tiny)


def test_richrep_list_trackers():
    r = CliRunner().invoke(app, ["list", "trackers"])
    assert r.exit_code == 0 and "mlflow" in r.output and "tracking_uri" in r.output


def test_a_password_in_the_tracking_uri_is_never_shown():
    assert shown("https://me:secret@mlflow.example:5000/x") == "https://me@mlflow.example:5000/x"
    assert shown("file:///tmp/mlruns") == "file:///tmp/mlruns"


def test_keys_and_params_every_tracker_accepts():
    assert key("t", "cat2", "accuracy", "size-all") == "t/cat2/accuracy/size-all"
    assert key("ood", "irm · oracle", "..", "") == "ood/irm _ oracle/_../_"
    assert len(key("x" * 300)) <= 240
    params = flatten({"a": {"b": [1, 2], "c": [{"d": None}]}, "e": "y" * 7000, "f": {}})
    assert params["a.b"] == "[1, 2]" and params["a.c.0.d"] == "null" and params["f"] == "{}"
    assert len(params["e"]) <= 6000 and params["e"].endswith("config.yaml]")
