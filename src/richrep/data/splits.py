"""Deterministic, stratified index splits derived from a seed."""

from __future__ import annotations

import numpy as np
import torch

from richrep.errors import ConfigError


def rng(seed: int, *salt: object) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *salt)`` (never the global RNG)."""
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    entropy = [seed] + [abs(hash_str(str(s))) for s in salt]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def hash_str(s: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def stratified_split(
    y: torch.Tensor | np.ndarray, fraction: float, seed: int, *salt: object
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held-out) with ``fraction`` of every class held out.

    Every class with at least two members keeps at least one and holds out at least one.
    """
    y = np.asarray(y)
    g = rng(seed, "split", *salt)
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        g.shuffle(idx)
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def per_class_sample(
    y: torch.Tensor | np.ndarray, n_per_class: int, seed: int, *salt: object
) -> np.ndarray:
    """Indices of ``n_per_class`` examples of every class (all of a class if it has fewer)."""
    y = np.asarray(y)
    g = rng(seed, "sample", *salt)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out.append(g.choice(idx, size=min(n_per_class, len(idx)), replace=False))
    return np.sort(np.concatenate(out))
