"""Permutation test and pairwise matrices of a measure over the K seeds of a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from richrep.analysis._common import Array, check_pair, feature_matrix
from richrep.analysis.measures import is_similarity, resolve
from richrep.errors import ConfigError, DataError


@dataclass(frozen=True)
class PermutationResult:
    """``observed`` value, ``null`` values under row permutations of Y, and the p-value
    (1 + #{null at least as similar as observed}) / (1 + n_permutations)."""

    observed: float
    null: np.ndarray = field(repr=False)
    p_value: float
    similarity: bool


def permutation_test(
    measure: str | Callable[..., float],
    X: Array,
    Y: Array,
    n_permutations: int = 1000,
    seed: int = 0,
    **params: Any,
) -> PermutationResult:
    """Test "X and Y are more similar than chance" by permuting the samples (rows) of Y.

    Permuting whole rows breaks the pairing of samples while keeping each representation
    intact, so the null distribution is the measure between unrelated samples (a standard
    permutation test; the +1 correction of Phipson & Smyth, 2010, keeps p > 0 and exact).
    ``measure`` is a name in ``MEASURES`` (its ``params`` validated) or a callable
    ``f(X, Y, **params) -> float``; for a distance (``similarity`` False, e.g. procrustes)
    "more similar" means smaller. Ties count against the hypothesis (conservative).
    """
    if n_permutations < 1:
        raise ConfigError(f"permutation_test: n_permutations must be >= 1; got {n_permutations}")
    fn = resolve(measure, params)
    sim = is_similarity(measure)
    x, y = check_pair(X, Y, 2, "permutation_test")
    observed = fn(x, y)
    g = torch.Generator().manual_seed(seed)
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        perm = torch.randperm(y.shape[0], generator=g).to(y.device)
        null[i] = fn(x, y[perm])
    tol = 1e-12 * max(1.0, abs(observed))  # rounding must not turn a tie into a win
    extreme = null >= observed - tol if sim else null <= observed + tol
    p = (1.0 + float(extreme.sum())) / (1.0 + n_permutations)
    return PermutationResult(observed=observed, null=null, p_value=p, similarity=sim)


def pairwise(
    features: Sequence[Array],
    measure: str | Callable[..., float] = "linear_cka",
    symmetric: bool = True,
    **params: Any,
) -> np.ndarray:
    """K×K matrix ``M[i, j] = measure(features[i], features[j])`` (e.g. over the seeds of a run).

    With ``symmetric`` (true of every registered measure) only i ≤ j is computed and mirrored.
    """
    fn = resolve(measure, params)
    if len(features) == 0:
        raise DataError("pairwise needs at least one feature matrix; got none")
    fs = [feature_matrix(f, f"features[{i}]") for i, f in enumerate(features)]
    n = fs[0].shape[0]
    for i, f in enumerate(fs):
        if f.shape[0] != n:
            raise DataError(
                f"features[{i}] has {f.shape[0]} rows but features[0] has {n}; "
                "all must hold the same samples"
            )
    k = len(fs)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(i if symmetric else 0, k):
            out[i, j] = fn(fs[i], fs[j].to(fs[i].device))
            if symmetric:
                out[j, i] = out[i, j]
    return out
