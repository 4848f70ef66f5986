"""Synthetic cat-K features with a known answer, written to disk in chunks, for ``scale.py``.

A latent ``z`` (``LATENT`` standard normal dims) decides the label: ``y`` is drawn from
``softmax(z T)`` (the teacher ``T`` weighs latent dim i by i^-1/2), so the best any classifier can do is the *Bayes accuracy*
``E[max_c p(c | z)]``, known exactly from the generated probabilities (printed as the ceiling).
Each of ``K`` "networks" sees ``z`` through its own map: ``relu(z A_j + noise_j - 0.3)``, ``p``
features, with ``A_j = 0.8 A_0 + 0.6 B_j`` (row i scaled by i^-1/2: a power-law spectrum) so that the networks agree on most of what they see
(cat-K features are strongly correlated across networks, as real ones are) and per-feature
noise of random scale. More networks average more noise away: accuracy grows with K towards
the ceiling, as in the paper.

Rows are generated in chunks from generators seeded by (seed, chunk), so a file of any size is
written without holding it, and bit-identically whatever the memory budget. Files are
safetensors of bfloat16 (as richrep's feature cache keeps bf16-extracted features) with a
sha256 sidecar, read back by :class:`richrep.data.feature_rows.FileRows`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from richrep.store.files import verify
from richrep.store.tensor_file import TensorFileWriter

LATENT = 256
CHUNK_ROWS = 4096
SHARED = 0.8


def _params(
    K: int, p: int, k: int, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spec = torch.arange(1, LATENT + 1, dtype=torch.float32) ** -0.5
    T = torch.randn(LATENT, k, generator=g) * spec[:, None] * 6.0 / spec.norm()
    A0 = torch.randn(LATENT, p, generator=g) * spec[:, None]
    maps, sds = [], []
    for _ in range(K):
        maps.append(
            SHARED * A0
            + math.sqrt(1 - SHARED**2) * torch.randn(LATENT, p, generator=g) * spec[:, None]
        )
        sds.append(0.2 + torch.rand(p, generator=g))
    return T, maps, torch.stack(sds)


def _rows(start: int, rows: int, seed: int, T: torch.Tensor):
    g = torch.Generator().manual_seed(seed * 1_000_003 + start // CHUNK_ROWS + 1)
    z = torch.randn(rows, LATENT, generator=g)
    prob = torch.softmax(z @ T, 1)
    return z, torch.multinomial(prob, 1, generator=g)[:, 0], prob.max(1).values


def labels(n: int, k: int, seed: int, offset: int = 0) -> tuple[np.ndarray, float]:
    """Labels of rows ``offset .. offset + n`` and their Bayes accuracy."""
    T, _, _ = _params(1, 1, k, seed)
    ys, best = [], 0.0
    for start in range(offset, offset + n, CHUNK_ROWS):
        _, y, p = _rows(start, min(offset + n, start + CHUNK_ROWS) - start, seed, T)
        ys.append(y.numpy())
        best += float(p.sum())
    return np.concatenate(ys), best / n


def network(n: int, j: int, K: int, p: int, k: int, seed: int, offset: int = 0):
    """Network ``j``'s features (rows, p) of rows ``offset .. offset + n``, chunk by chunk."""
    T, maps, sds = _params(K, p, k, seed)
    for start in range(offset, offset + n, CHUNK_ROWS):
        rows = min(offset + n, start + CHUNK_ROWS) - start
        z, _, _ = _rows(start, rows, seed, T)
        g = torch.Generator().manual_seed((seed * 1_000_003 + start // CHUNK_ROWS + 1) * 64 + j)
        yield torch.relu(z @ maps[j] + torch.randn(rows, p, generator=g) * sds[j] - 0.3)


def write(
    folder: Path, n: int, K: int, p: int, k: int, seed: int = 0, offset: int = 0
) -> list[Path]:
    """One bf16 safetensors file per network (``folder/net<j>.safetensors``, as richrep caches
    one file per member), reused when already there and intact; the paths."""
    paths = []
    for j in range(K):
        path = folder / f"net{j}.safetensors"
        if not verify(path):
            meta = {"j": j, "p": p, "k": k, "seed": seed, "offset": offset}
            with TensorFileWriter(path, "features", (n, p), torch.bfloat16, meta) as w:
                for x in network(n, j, K, p, k, seed, offset):
                    w.write(x)
                w.close()
        paths.append(path)
    return paths
