"""Real features for the probe benchmark: cat5 penultimate features of small Fashion-MNIST CNNs.

Five seeds of a small CNN (conv 32 -> conv 64, 3x3 same padding, ReLU, 2x2 max-pool after each,
FC to 128, ReLU, then a linear head) are trained for one epoch each on the task's train split
(SGD lr 0.05, momentum 0.9, batch 256, bf16 autocast + channels_last on the CPU). Their 128-dim
penultimate features are concatenated (5 x 128 = 640 dims) for the train, validation and test
images, and cached as an .npz in ``~/.cache/richrep-bench/`` so reruns are fast.

Plain torch on purpose: this is benchmark scaffolding, independent of richrep's training code.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEEDS = (0, 1, 2, 3, 4)
EPOCHS = 1
BATCH = 256
LR = 0.05
MOMENTUM = 0.9
VERSION = 1  # bump when the recipe changes, so an old cache is not reused


def cache_path(seeds: tuple[int, ...] = SEEDS) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    tag = "-".join(str(s) for s in seeds)
    return Path(base) / "richrep-bench" / f"fmnist_cnn_cat{len(seeds)}_s{tag}_v{VERSION}.npz"


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _standardize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def train_one(seed: int, x: torch.Tensor, y: torch.Tensor, verbose: bool = True) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(int(y.max()) + 1).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(10_000 + seed)
    n = x.shape[0]
    t0 = time.perf_counter()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if verbose:
        print(
            f"  seed {seed}: trained {EPOCHS} epoch(s) in {time.perf_counter() - t0:.1f} s, "
            f"last batch loss {loss.item():.3f}",
            flush=True,
        )
    return model


@torch.no_grad()
def penultimate(model: SmallCNN, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(model.features(x[i : i + batch]).float())
    return torch.cat(out)


def build(seeds: tuple[int, ...] = SEEDS, verbose: bool = True) -> dict[str, np.ndarray]:
    from richrep.data import load_task

    task = load_task("fashion_mnist")
    mean, std = float(task.train.x.mean()), float(task.train.x.std())
    xs = {k: _standardize(s.x, mean, std) for k, s in task.splits().items()}
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in xs}
    for seed in seeds:
        model = train_one(seed, xs["train"], task.train.y, verbose)
        for k, x in xs.items():
            feats[k].append(penultimate(model, x))
        if verbose:
            logits = model.head(feats["test"][-1])
            acc = (logits.argmax(1) == task.test.y).float().mean().item()
            print(f"  seed {seed}: own head test accuracy {acc:.4f}", flush=True)
    out: dict[str, np.ndarray] = {}
    for k, s in task.splits().items():
        out[f"x_{k}"] = torch.cat(feats[k], dim=1).numpy().astype(np.float32)
        out[f"y_{k}"] = s.y.numpy().astype(np.int64)
    return out


def load_features(seeds: tuple[int, ...] = SEEDS, verbose: bool = True) -> dict[str, np.ndarray]:
    """Return ``{"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"}`` (cached)."""
    path = cache_path(seeds)
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if verbose:
        print(f"building cat{len(seeds)} CNN features (cache: {path})", flush=True)
    t0 = time.perf_counter()
    data = build(seeds, verbose)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    if verbose:
        print(f"features built in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


if __name__ == "__main__":
    torch.set_num_threads(2)
    d = load_features()
    print({k: v.shape for k, v in d.items()})
