"""A run folder that can be trusted, and hostile input: corrupt or missing files are found,
quarantined (never deleted) and redone; a stage that finds a member missing says so; text
from files and the command line is escaped; bad arguments are one clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from richrep import __version__
from richrep.cli import app
from richrep.config import parse_experiment
from richrep.pipeline import run_experiment

runner = CliRunner()


def _suite(tiny):
    tiny["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [
            {
                "name": "new",
                "shifts": [{"classes": {"keep": [5, 6, 7]}}],
                "sizes": [10, "all"],
                "draws": 2,
            },
            {"name": "in", "shifts": [{"classes": {"keep": [0, 1, 2, 3, 4]}}]},
        ],
    }
    return tiny


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (config file, run folder), copied fresh for each test."""
    import copy

    from tests.conftest import TINY

    tiny = _suite(copy.deepcopy(TINY))
    tiny["data"]["params"]["num_samples"] = 2000
    tiny["training"]["epochs"] = 8
    base = tmp_path_factory.mktemp("finished")
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    run = run_experiment(parse_experiment(tiny), base / "runs", log=lambda m: None)
    return cfg, run.store.root


@pytest.fixture
def run_copy(finished, tmp_path):
    cfg, root = finished
    out = tmp_path / "runs"
    shutil.copytree(root, out / root.name)
    return cfg, out, out / root.name


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_corrupt_checkpoint_is_quarantined_reported_and_retrained(run_copy):
    cfg, out, run = run_copy
    rows, done = (run / "results.jsonl").read_bytes(), (run / "done").read_bytes()
    ck = run / "checkpoints" / "single-s1.safetensors"
    original = ck.read_bytes()
    raw = bytearray(original)
    raw[len(raw) // 2] ^= 0xFF
    ck.write_bytes(bytes(raw))
    r = _invoke("run", cfg, "--out", out, "--only", "evaluate")
    assert r.exit_code == 2 and "single-s1 is corrupt" in r.output and "Traceback" not in r.output
    assert (run / "results.jsonl").read_bytes() == rows and (run / "done").read_bytes() == done
    (moved,) = (run / "quarantine").glob("*-single-s1.safetensors")
    assert moved.read_bytes() == bytes(raw)  # the user's file is kept, not deleted
    r = _invoke("run", cfg, "--out", out)
    assert r.exit_code == 0, r.output
    assert "nothing to do" not in r.output and "trained 1, reused 1 members" in r.output
    assert ck.read_bytes() == original  # retrained bit for bit
    assert (run / "results.jsonl").read_bytes() == rows


def test_analyze_never_deletes_a_corrupt_checkpoint(run_copy):
    _, _, run = run_copy
    ck = run / "checkpoints" / "single-s0.safetensors"
    ck.write_bytes(ck.read_bytes()[:-7])
    r = _invoke("analyze", run, "--permutations", 5, "--max-samples", 200)
    assert r.exit_code == 2 and "1 trained seed" in r.output
    assert list((run / "quarantine").glob("*-single-s0.safetensors"))


@pytest.mark.parametrize("victim", ["results.jsonl", "report.html"])
def test_a_complete_run_rebuilds_a_deleted_file(run_copy, victim):
    cfg, out, run = run_copy
    before = (run / "results.jsonl").read_bytes()
    (run / victim).unlink()
    r = _invoke("run", cfg, "--out", out)
    assert r.exit_code == 0 and "nothing to do" not in r.output, r.output
    assert (run / victim).exists() and (run / "results.jsonl").read_bytes() == before
    r = _invoke("run", cfg, "--out", out)
    assert "nothing to do" in r.output


@pytest.mark.parametrize("cut", ["line", "mid-line"])
def test_truncated_entry_results_are_recomputed_not_reused(run_copy, cut):
    cfg, out, run = run_copy
    before = (run / "results.jsonl").read_bytes()
    (entry,) = run.glob("results/new-*.jsonl")
    data = entry.read_bytes()
    lines = data.splitlines(keepends=True)
    entry.write_bytes(b"".join(lines[:3]) if cut == "line" else data[: len(data) // 2])
    (run / "results.jsonl").unlink()
    r = _invoke("run", cfg, "--out", out)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "new: reused" not in r.output and "truncated or modified" in r.output
    assert (run / "results.jsonl").read_bytes() == before
    assert list((run / "quarantine").glob("*-new-*.jsonl"))


def test_stray_checkpoints_are_ignored_with_a_warning(run_copy):
    cfg, out, run = run_copy
    before = (run / "results.jsonl").read_bytes()
    for suffix in (".safetensors", ".json"):
        shutil.copy(
            run / "checkpoints" / f"single-s0{suffix}", run / "checkpoints" / f"evil-s9{suffix}"
        )
    r = _invoke("run", cfg, "--out", out, "--only", "evaluate")
    assert r.exit_code == 0 and "ignored 2 file(s) in checkpoints/" in r.output, r.output
    assert (run / "results.jsonl").read_bytes() == before


def test_hostile_run_folder_renders_escaped(run_copy):
    cfg, out, run = run_copy
    side = run / "checkpoints" / "single-s0.json"
    meta = json.loads(side.read_text())
    meta["precision"] = "<script>alert(1)</script>"
    meta["device"] = '"><img src=x onerror=alert(1)>'
    side.write_text(json.dumps(meta))
    r = _invoke("run", cfg, "--out", out, "--only", "report")
    assert r.exit_code == 0, r.output
    html = (run / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html and "&lt;script&gt;" in html


def test_results_strip_terminal_escapes(run_copy):
    from richrep.store import read_jsonl, write_jsonl

    _, _, run = run_copy
    rows = read_jsonl(run / "results.jsonl")
    for r in rows:
        r["shift"] = "\x1b[31mred\x1b[0m\x1b]0;title\x07[bold]x"
    write_jsonl(run / "results.jsonl", rows)
    for fmt in ("table", "markdown", "csv"):
        r = _invoke("results", run, "--format", fmt)
        assert r.exit_code == 0 and "\x1b" not in r.output and "\x07" not in r.output, fmt
    assert "[bold]x" in _invoke("results", run, "--format", "csv").output


def test_markup_in_paths_and_keys_is_printed_as_written(tiny, tmp_path):
    tiny["[bold]oops"] = 1
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = _invoke("run", cfg, "--out", tmp_path / "[/x]")
    assert r.exit_code == 2 and "[bold]oops" in r.output and "MarkupError" not in r.output
    del tiny["[bold]oops"]
    tiny["evaluation"] = {"suite": []}
    cfg.write_text(yaml.safe_dump(tiny))
    r = _invoke("run", cfg, "--out", tmp_path / "[/x]", "--only", "train")
    assert r.exit_code == 0 and "[/x]" in r.output, r.output


def test_every_seed_diverging_says_why(tiny, tmp_path):
    tiny["training"].update({"lr": 1e6, "momentum": 0.0})
    _suite(tiny)
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = _invoke("run", cfg, "--out", tmp_path)
    assert r.exit_code == 2 and "no trained seed" in r.output
    assert "training loss became" in r.output and "run the train stage" not in r.output


def test_version_did_you_mean_and_plain_listing(tiny, tmp_path):
    r = _invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"richrep {__version__}"
    tiny["trainig"] = tiny.pop("training")
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = _invoke("run", cfg)
    assert r.exit_code == 2 and "did you mean 'training'?" in r.output
    for kind in ("shifts", "members", "protocols", "objectives", "probes", "floors", "engines"):
        r = _invoke("list", kind)
        assert r.exit_code == 0 and "``" not in r.output, kind


def test_bad_arguments_are_clear_errors(run_copy, tiny, tmp_path):
    cfg, out, run = run_copy
    for device in ("meta", "mps", "cuda:7", "nonsense"):
        r = _invoke("run", cfg, "--out", out, "--device", device)
        assert r.exit_code == 2 and "device" in r.output and "Traceback" not in r.output, device
    for args, msg in (
        (("--max-samples", 0), "--max-samples must be at least 2"),
        (("--permutations", 0), "--permutations must be at least 1"),
        (("--measure", "cka"), "unknown measure 'cka'"),
    ):
        r = _invoke("analyze", run, *args)
        assert r.exit_code == 2 and msg in r.output, r.output
    for patch, msg in (
        ({"seeds": True}, "not a boolean"),
        ({"seeds": [0, -1]}, "greater than or equal to 0"),
    ):
        bad = {**tiny, "training": {**tiny["training"], **patch}}
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
        r = _invoke("run", tmp_path / "b.yaml")
        assert r.exit_code == 2 and msg in r.output and "training.seeds" in r.output, r.output
    for raw, msg in (
        ({**tiny, "seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({**tiny, "data": {**tiny["data"], "params": {"seed": -3}}}, "'seed'=-3 is invalid"),
        ({**tiny, "data": {**tiny["data"], "params": {"num_samples": 10**11}}}, "would need about"),
    ):
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
        r = _invoke("run", tmp_path / "b.yaml", "--out", tmp_path / "o")
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output


def test_sizes_beyond_the_target_state_the_real_n(tiny, tmp_path):
    tiny["evaluation"] = {
        "subsets": 1,
        "floors": ["input"],
        "suite": [
            {
                "name": "few",
                "shifts": [{"classes": {"keep": [5, 6]}}],
                "sizes": [100000],
                "draws": 1,
            }
        ],
    }
    with pytest.warns(UserWarning, match=r"'few': size\(s\) \[100000\] per class .* as size 'all'"):
        run = run_experiment(parse_experiment(tiny), tmp_path, log=lambda m: None)
    from richrep.stages.evaluate import read_results

    rows = read_results(run)
    pool = len(run.target(run.exp.evaluation.suite[0]).train) + len(
        run.target(run.exp.evaluation.suite[0]).val
    )
    # every example, so the row says "all", not the 100000 it was asked for
    assert rows and all(
        r.size == "all" and r.train_n == pool and r["per_class"] < 150 for r in rows
    )


def test_a_suite_entry_may_name_a_dataset(tiny, tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 1, 40)) + y[:, None, None]  # float64, the NumPy default
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    np.savez(tmp_path / "wrong.npz", x=x[:, :, :30], y=y)
    tiny["evaluation"] = {
        "subsets": 1,
        "suite": [
            {
                "name": "mine",
                "dataset": "npz",
                "params": {"path": str(tmp_path / "mine.npz"), "kind": "signal"},
                "sizes": [5, "all"],
            }
        ],
    }
    run = run_experiment(parse_experiment(tiny), tmp_path / "a", log=lambda m: None)
    from richrep.stages.evaluate import read_results

    rows = read_results(run)
    assert {r.column for r in rows} >= {"single", "cat2", "input", "random2"}
    assert all(r["test_split"]["seed"] == 0 and r.n == 24 for r in rows)  # 20 % held out, seeded
    assert max(r.value for r in rows if r.column == "input") > 0.9
    tiny["evaluation"]["suite"][0]["params"]["path"] = str(tmp_path / "wrong.npz")
    cfg = tmp_path / "wrong.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = _invoke("run", cfg, "--out", tmp_path / "b")
    assert r.exit_code == 2 and "inputs have shape (1, 30)" in r.output and "(1, 40)" in r.output
    assert not list((tmp_path / "b").rglob("*.safetensors"))  # refused before any training


@pytest.mark.slow
def test_sigterm_prints_how_to_resume(tiny, tmp_path):
    tiny["data"]["params"]["num_samples"] = 3000
    tiny["training"]["epochs"] = 30
    tiny["runtime"] = {"threads": 1}
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "richrep", "run", str(cfg), "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(
        (tmp_path / "r").glob("*/checkpoints/*.partial.safetensors")
    ):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 130 and "interrupted; run the same command again to resume" in out, out
    assert "Traceback" not in out


@pytest.mark.slow
def test_analyze_a_finished_run(run_copy):
    _, _, run = run_copy
    r = _invoke("analyze", run, "--permutations", 20, "--max-samples", 150)
    assert r.exit_code == 0, r.output
    s = json.loads((run / "analysis" / "summary.json").read_text())
    assert s["n"] == 150 and s["members"] == ["single-s0", "single-s1"]
    assert s["self"]["linear_cka"] == pytest.approx(1.0)
    values = [v for m in s["measures"].values() for row in m for v in row]
    assert values and all(np.isfinite(values))
    assert 0 < s["measures"]["linear_cka"][0][1] < 1 and 0 < s["permutation_test"]["p_value"] <= 1
    assert "Are the seeds different?" in (run / "report.html").read_text()


def test_trained_seeds_beat_the_floors_in_distribution(finished):
    from richrep.run import open_run
    from richrep.stages.evaluate import read_results

    rows = [r for r in read_results(open_run(finished[1])) if r.entry == "in"]
    by = {c: np.mean([r.value for r in rows if r.column == c]) for c in ("single", "random2")}
    assert by["single"] > by["random2"] + 0.05 and by["single"] > 1 / 5 + 0.2  # 5 classes
