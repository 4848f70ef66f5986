"""Checkpoints in safetensors (never pickle): model weights, optimizer state and the epoch.

The optimizer's tensors are stored under ``optim/<param index>/<name>``; its hyper-parameters
(plain numbers) go to the sidecar JSON. Loading goes through :func:`richrep.store.load_tensors`,
which checks the recorded sha256 first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from richrep.store import load_tensors, save_tensors


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **meta: Any
) -> str:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, state in sd["state"].items():
            for name, value in state.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim/{idx}/{name}"] = t
        meta["param_groups"] = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return save_tensors(path, tensors, meta)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place from ``path``; return the sidecar metadata."""
    tensors, meta = load_tensors(path)
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(model_sd)
    if optimizer is not None and "param_groups" in meta:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, idx, name = k.split("/", 2)
                state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta
