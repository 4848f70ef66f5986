"""The command line: run, rerun (no work twice), list, and clean errors."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from richrep.cli import app

runner = CliRunner()


def test_list_registries():
    for kind, name in [
        ("datasets", "fashion_mnist"),
        ("shifts", "gaussian_blur"),
        ("encoders", "cnn"),
    ]:
        r = runner.invoke(app, ["list", kind])
        assert r.exit_code == 0 and name in r.output


def test_run_train_then_nothing_twice(tiny, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "runs"), "--only", "train"])
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {
        "single-s0.safetensors",
        "single-s1.json",
    }
    assert (run / "config.yaml").exists() and (run / "env.json").exists()
    mtime = (run / "checkpoints" / "single-s0.safetensors").stat().st_mtime_ns
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "runs"), "--only", "train"])
    assert (
        r.exit_code == 0
        and (run / "checkpoints" / "single-s0.safetensors").stat().st_mtime_ns == mtime
    )


def test_invalid_file_is_one_clean_error(tiny, tmp_path):
    tiny["training"]["optimizer"] = "adam"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "training.optimizer" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output
