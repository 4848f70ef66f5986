"""A whole out-of-distribution run, end to end: colored MNIST-1D, seeds, RFC, DivDis, OOD heads
and networks, the report's section and the CLI's table."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import parse_experiment
from richrep.pipeline import run_experiment
from richrep.stages.evaluate import read_results

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "ood_tiny",
    "data": {"dataset": "colored_mnist1d", "params": {"base_params": {"num_samples": 1200}}},
    "model": {"encoder": "mlp", "params": {"hidden": [32], "feature_dim": 16}},
    "training": {
        "seeds": 2,
        "epochs": 3,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 1e-3,
        "baselines": [
            {"kind": "rfc", "k": 2, "seeds": 1},
            {"kind": "diverse", "k": 2, "seeds": 1, "unlabeled": "test"},
        ],
    },
    "evaluation": {
        "subsets": 1,
        "suite": [
            {
                "name": "heads",
                "protocol": {
                    "ood": {"steps": 20, "eval_every": 10, "restarts": 2, "anneal_steps": 5}
                },
            },
            {
                "name": "networks",
                "protocol": {
                    "ood": {
                        "mode": "network",
                        "algorithms": ["erm", "vrex"],
                        "grid": {"vrex": {"penalty_weight": [10.0]}},
                        "steps": 10,
                        "eval_every": 5,
                        "restarts": 1,
                        "columns": ["single", "rfc2", "random2"],
                    }
                },
            },
            {"name": "pick", "protocol": {"disambiguate": {"labels": [4], "draws": 2}}},
        ],
    },
    "runtime": {"threads": 1},
}


def test_an_ood_run_end_to_end(tmp_path):
    run = run_experiment(parse_experiment(CONFIG), tmp_path, log=lambda m: None)
    rows = read_results(run)
    heads = [r for r in rows if r.entry == "heads"]
    columns = {r.column for r in heads}
    assert {"input", "random2", "single", "cat2", "rfc2", "diverse2-test"} <= columns
    assert not any("rfc_round" in c for c in columns)
    assert all(math.isfinite(r.value) and 0 <= r.value <= 1 for r in rows)
    variants = {r.variant for r in heads}
    assert len(variants) == 10  # 5 algorithms × 2 rules
    envs = {r.environment for r in heads if r.metric == "accuracy"}
    assert envs == {"test e=0.9", "test e=0.1", "test e=0.5"}
    nets = [r for r in rows if r.entry == "networks"]
    assert {r.column for r in nets} == {"single", "rfc2", "random2"}
    assert all(r.extra["mode"] == "network" for r in nets)
    picks = [r for r in rows if r.entry == "pick"]
    assert {r.column for r in picks} == {"rfc2", "diverse2-test"}  # the multi-head members
    page = (run.store.root / "report.html").read_text()
    assert "Out of distribution" in page
    out = CliRunner().invoke(app, ["results", str(run.store.root), "--ood"])
    assert out.exit_code == 0, out.output
    assert "| algorithm | input | random2 | single | cat2 |" in out.output
