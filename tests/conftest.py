from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch

# One thread by default: the tests' tensors are small, and the fast tier ran faster on one
# (158 s on one core beside another job, against 172 s on two idle cores); it also lets the
# suite share the machine with another job. Tests of thread budgets set their own.
# RICHREP_TEST_THREADS=2 (or more) for the old behaviour.
torch.set_num_threads(int(os.environ.get("RICHREP_TEST_THREADS", "1")))

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "dataset": "mnist1d",
        "params": {"num_samples": 1000},
        "source": [{"classes": {"keep": [0, 1, 2, 3, 4]}}],
    },
    "model": {"encoder": "mlp", "params": {"hidden": [32], "feature_dim": 16}},
    "training": {"seeds": 2, "epochs": 2, "batch_size": 64, "lr": 0.05, "precision": "fp32"},
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A small, fast experiment (MNIST-1D, one-hidden-layer MLP, 2 seeds, 2 epochs)."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def fashion():
    from richrep.data import load_task
    from richrep.errors import DataError

    try:
        return load_task("fashion_mnist", {"download": False})
    except DataError as e:
        if os.environ.get("CI"):  # CI installs the files: their absence is a failure there
            raise
        pytest.skip(f"needs the Fashion-MNIST files: {e}")
