"""Hostile numbers, files and plug-ins: each ends in one clear error naming the field, file or
plug-in and what is accepted, before any work (or in a correct result), never a hang or a
traceback."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from richrep import __version__, registry
from richrep.cli import app
from richrep.config import dump_experiment, parse_experiment
from richrep.errors import ConfigError
from richrep.models import build_encoder
from richrep.pipeline import run_experiment
from richrep.results import Row
from richrep.run import Run
from richrep.store import RunStore, write_jsonl

runner = CliRunner()


def _weights(path, nan=False):
    enc = build_encoder("mlp", (40,), 1.0, hidden=[32], feature_dim=16)
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    if nan:
        sd["body.1.weight"][0, 0] = float("nan")
    save_file(sd, str(path))
    return str(path)


def _big_int(t, p):
    del t["seed"]
    return yaml.safe_dump(t) + "seed: " + "9" * 5000 + "\n"


def _nul(t, p):
    return yaml.safe_dump(t).replace("name: tiny", "name: tiny\x00")


def _set(section, key, value):
    def edit(t, p):
        t.setdefault(section, {})[key] = value(p) if callable(value) else value
        return yaml.safe_dump(t)

    return edit


def _suite(**entry):
    return _set("evaluation", "suite", [{"name": "a", **entry}])


def _hidden(t, p):
    t["model"]["params"]["hidden"] = [1_000_000_000]
    return yaml.safe_dump(t)


def _nan_seed(t, p):
    files = [_weights(p / "nan.safetensors", nan=True), _weights(p / "ok.safetensors")]
    t["training"]["seeds"] = {"from_checkpoints": files}
    return yaml.safe_dump(t)


def _pretrained(kind):
    def edit(t, p):
        if kind == "dir":
            (p / "weights").mkdir()
            t["model"]["pretrained"] = str(p / "weights")
        else:
            t["model"]["pretrained"] = _weights(p / "nan.safetensors", nan=True)
        return yaml.safe_dump(t)

    return edit


CASES = {  # id: (experiment file, extra arguments, what the error says, what it must not say)
    "5000-digit integer": (_big_int, [], ["(line ", "5000 characters", "4300 digits"], []),
    "NUL character": (_nul, [], ["(line ", "U+0000", "not allowed"], []),
    "suite entry field typo": (
        _suite(sizez=[5]),
        [],
        ["evaluation.suite.0.sizez", "did you mean 'sizes'"],
        ["'suite'?"],
    ),
    "subsets above the seeds' subsets": (
        _set("evaluation", "subsets", 1_000_000_000),
        [],
        ["evaluation.subsets", "2 seed(s)", "at most 1 distinct", "at most 3"],
        [],
    ),
    "epochs 1e12": (
        _set("training", "epochs", 10**12),
        [],
        ["training.epochs", "10,000,000,000 examples", "--yes"],
        [],
    ),
    "epochs 1e30": (_set("training", "epochs", 1e30), [], ["training.epochs"], []),
    "draws 1e9": (
        _suite(sizes=[5], draws=1_000_000_000),
        [],
        ["evaluation.suite", "100,000 probe fits", "--yes"],
        [],
    ),
    "hidden 1e9": (
        _hidden,
        [],
        ["model:", "parameters", "1,000,000,000", "--yes"],
        ["allocate"],
    ),
    "pretrained directory": (_pretrained("dir"), [], ["model.pretrained", "is a directory"], []),
    "pretrained NaN": (
        _pretrained("nan"),
        [],
        ["nan.safetensors", "non-finite", "body.1.weight"],
        ["training.lr"],
    ),
    "checkpoint NaN": (_nan_seed, [], ["nan.safetensors", "non-finite"], []),
    "ray address nobody listens on": (
        lambda t, p: yaml.safe_dump(t),
        ["--engine", "ray", "--address", "127.0.0.1:1"],
        ["cannot reach a Ray cluster at 127.0.0.1:1", "connect_timeout"],
        [],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_experiment_is_one_clean_error(case, tiny, tmp_path):
    make, args, says, never = CASES[case]
    tiny["runtime"] = {"threads": 1}
    cfg = tmp_path / "hostile.yaml"
    cfg.write_text(make(tiny, tmp_path))
    out = tmp_path / "runs"
    t0 = time.perf_counter()
    r = runner.invoke(app, ["run", str(cfg), "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # no traceback
    text = " ".join(r.output.split())
    for s in says:
        assert s in text, (s, r.output)
    for s in never:
        assert s not in text, (s, r.output)
    assert time.perf_counter() - t0 < 60
    assert not (out / "checkpoints").exists()


def test_threads_above_the_cores_are_clamped_with_a_warning(tiny, tmp_path):
    from richrep.runtime.threads import ThreadBudget, available_cores

    tiny["runtime"] = {"threads": 1_000_000}
    tiny["training"]["epochs"] = 1
    exp = parse_experiment(tiny)
    old = torch.get_num_threads()
    with pytest.warns(RuntimeWarning, match=r"runtime.threads: 1000000 .* using"):
        run = run_experiment(exp, tmp_path, only="train", log=lambda m: None)
    assert torch.get_num_threads() == old  # the budget applied for the stage, then restored
    with pytest.warns(RuntimeWarning, match="using"):
        assert ThreadBudget.resolve(1_000_000).threads == available_cores()
    assert all(s.ok for s in run.statuses().values())


def test_yes_runs_work_above_the_limits(tiny, tmp_path, monkeypatch):
    from richrep.stages import budget

    monkeypatch.setattr(budget, "MAX_TRAINING_PASSES", 10)
    tiny["runtime"] = {"threads": 1}
    tiny["training"]["epochs"] = 1
    exp = parse_experiment(tiny)
    with pytest.raises(ConfigError, match="training.epochs.*more than the 10 examples"):
        run_experiment(exp, tmp_path, only="train", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # refused before the run folder was made
    run = run_experiment(exp, tmp_path, only="train", log=lambda m: None, yes=True)
    assert all(s.ok for s in run.statuses().values())


def _run_folder(tiny, tmp_path, marker=None):
    exp = parse_experiment(tiny)
    store = RunStore(tmp_path / exp.run_id())
    store.root.mkdir(parents=True)
    (store.root / "config.yaml").write_text(dump_experiment(exp))
    Run(exp, store)
    store.mark_format(__version__)
    if marker is not None:
        (store.root / "richrep.json").write_text(json.dumps(marker))
    rows = [
        Row(exp.run_id(), "new", "transfer", "single", "single", 1, (0,), 16, 100, m, 0.5, 10)
        for m in ("accuracy", "macro_f1")
    ]
    write_jsonl(store.results, [row.to_dict() for row in rows])
    return store.root


CLI_CASES = {  # id: (command [, run folder, options], what the error says, richrep.json)
    "richrep.json holding a list": (["results"], ["richrep.json", "JSON list"], [1, 2]),
    "--metric nope": (["results", "--metric", "acuracy"], ["did you mean 'accuracy'"], None),
    "--metric lists the metrics": (["results", "--metric", "nope"], ["accuracy, macro_f1"], None),
    "--permutations 1e9": (
        ["analyze", "--permutations", "1000000000"],
        ["--permutations", "100,000 permutations", "--yes"],
        None,
    ),
    "--measure typo": (
        ["analyze", "--measure", "linear_ckaa"],
        ["did you mean 'linear_cka'"],
        None,
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_hostile_command_is_one_clean_error(case, tiny, tmp_path):
    command, says, marker = CLI_CASES[case]
    folder = _run_folder(tiny, tmp_path, marker)
    r = runner.invoke(app, [command[0], str(folder), *command[1:]])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception
    text = " ".join(r.output.split())
    for s in says:
        assert s in text, (s, r.output)


def test_a_silent_address_times_out_quickly():
    from richrep.training.engines.ray_engine import check_address

    with socket.socket() as s:  # listens, never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*connect_timeout"):
            check_address(f"127.0.0.1:{port}", 0.3)
        assert time.perf_counter() - t0 < 3
    with pytest.raises(ConfigError, match="not host:port"):
        check_address("127.0.0.1:port", 0.3)


# -- plug-ins --------------------------------------------------------------------------------

PLUGINS = {
    "raises on import": ("richrep_fake_raises", "raise RuntimeError('boom in the plug-in')\n"),
    "missing module": ("richrep_fake_missing", None),
    "clashes with a built-in": (
        "richrep_fake_clash",
        "from richrep.data.shifts import SHIFTS\n"
        "@SHIFTS.register('fake_new_shift')\n"
        "def fake_new_shift(task):\n    return task\n"
        "@SHIFTS.register('gaussian_blur')\n"
        "def gaussian_blur(task):\n    return task\n",
    ),
}


@pytest.fixture
def broken_plugin(request, tmp_path, monkeypatch):
    module, code = PLUGINS[request.param]
    if code is not None:
        (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(request.param.split()[0], module, "richrep.plugins")
    ep = ep._for(SimpleNamespace(name="richrep-fake-plugins"))
    seen = []

    def entry_points(**kw):
        seen.append(kw)
        return [ep] if kw.get("group") == "richrep.plugins" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_LOADED", [False])
    broken = getattr(registry, "BROKEN_PLUGINS", [])
    before = list(broken)
    yield ep
    broken[:] = before
    sys.modules.pop(module, None)
    assert seen, "the loader did not ask for the entry points"


@pytest.mark.parametrize("broken_plugin", list(PLUGINS), indirect=True)
def test_a_broken_plugin_is_named_and_left_out(broken_plugin, tiny, tmp_path):
    r = runner.invoke(app, ["list", "shifts"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"plug-in {broken_plugin.name!r}" in text and "richrep-fake-plugins" in text
    assert "going on without it" in text and "gaussian_blur" in text
    assert "fake_new_shift" not in text  # what a clashing plug-in registered is removed
    from richrep.data.shifts import SHIFTS

    assert SHIFTS.entry("gaussian_blur").fn.__module__ == "richrep.data.shifts"
    parse_experiment(tiny)  # a run that does not need it goes on
    tiny["data"]["source"] = [{"fake_new_shift": {}}]
    cfg = tmp_path / "needs.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "unknown shift 'fake_new_shift'" in r.output
    assert f"plug-in {broken_plugin.name!r}" in " ".join(r.output.split())
