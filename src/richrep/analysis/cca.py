"""CCA-based measures and the orthogonal Procrustes distance, all from d×d moments.

* ``mean_cca``: mean squared canonical correlation (Hotelling 1936; the R²_CCA of Kornblith
  et al. 2019), invariant to invertible linear maps of either input.
* ``svcca``: SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein, NeurIPS 2017): keep the top
  principal directions explaining ``keep`` (99%) of each input's variance, then the mean
  canonical correlation (not squared) between the reduced inputs.
* ``procrustes``: orthogonal Procrustes distance (Ding, Denain & Steinhardt, NeurIPS 2021) —
  a *distance* (0 = same up to rotation, scaling and translation; at most 2).

Rank deficiency (dead units, collinear units, d > n) is handled by whitening only directions
whose variance exceeds ``eps`` × the largest variance; the canonical correlations are over
min(rank X, rank Y) pairs. A constant input has no directions: mean_cca and svcca give 0.0
and procrustes gives 2.0 (least similar), never NaN.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from richrep.analysis._common import Array, centered_moments, check_pair
from richrep.analysis.measures import register_measure
from richrep.errors import ConfigError

Eps = Annotated[float, Field(gt=0, lt=1)]
Fraction = Annotated[float, Field(gt=0, le=1)]


def _check_eps(eps: float) -> None:
    if not 0 < eps < 1:
        raise ConfigError(f"eps must be in (0, 1); got {eps}")


def _whitener(c: torch.Tensor, eps: float, keep: float = 1.0) -> torch.Tensor:
    """d×k map W with Wᵀ C W = I on the top directions of the (sum) covariance ``c``.

    Directions with eigenvalue ≤ eps·max are dropped; with ``keep`` < 1 only the leading ones
    that explain a ``keep`` fraction of the total variance are kept (SVCCA).
    """
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    evals, evecs = evals.flip(0), evecs.flip(1)  # decreasing
    top = float(evals[0]) if evals.numel() else 0.0
    if top <= 0.0:
        return evecs[:, :0]
    ok = evals > eps * top
    k = int(ok.sum())
    if keep < 1.0:
        frac = torch.cumsum(evals.clamp(min=0.0), 0) / evals.clamp(min=0.0).sum()
        k = min(k, int((frac < keep - 1e-12).sum()) + 1)
    return evecs[:, :k] / evals[:k].sqrt()


def _canonical(X: Array, Y: Array, eps: float, keep: float, what: str) -> np.ndarray:
    _check_eps(eps)
    if not 0 < keep <= 1:
        raise ConfigError(f"{what}: keep must be in (0, 1]; got {keep}")
    x, y = check_pair(X, Y, 2, what)
    m = centered_moments(x, y)
    cxx, cyy, cxy = m.clean()
    wx, wy = _whitener(cxx, eps, keep), _whitener(cyy, eps, keep)
    if wx.shape[1] == 0 or wy.shape[1] == 0:
        return np.zeros(0)
    rho = torch.linalg.svdvals(wx.T @ cxy @ wy).clamp(0.0, 1.0)
    return rho.cpu().numpy()


def canonical_correlations(X: Array, Y: Array, eps: float = 1e-6) -> np.ndarray:
    """Canonical correlations of X and Y (Hotelling 1936), decreasing, in [0, 1].

    There are min(rank X, rank Y) of them, where directions with variance ≤ ``eps`` × the
    largest do not count; empty when either input is constant.
    """
    return _canonical(X, Y, eps, 1.0, "canonical_correlations")


@register_measure("mean_cca", similarity=True)
def mean_cca(X: Array, Y: Array, eps: Eps = 1e-6) -> float:
    """Mean squared canonical correlation (R²_CCA, Kornblith et al. 2019), in [0, 1].

    1 for X vs X; invariant to invertible linear maps and translations of either input.
    ``eps`` is the relative variance below which a direction counts as rank deficiency.
    """
    rho = _canonical(X, Y, eps, 1.0, "mean_cca")
    return float(np.mean(rho**2)) if rho.size else 0.0


@register_measure("svcca", similarity=True)
def svcca(X: Array, Y: Array, keep: Fraction = 0.99, eps: Eps = 1e-6) -> float:
    """SVCCA (Raghu et al., NeurIPS 2017): mean canonical correlation of the top principal
    directions explaining ``keep`` of each input's variance, in [0, 1].

    Invariant to orthogonal maps, isotropic scaling and translation; to all invertible linear
    maps only when no direction is cut (``keep=1``, where it is the mean CCA correlation).
    """
    rho = _canonical(X, Y, eps, keep, "svcca")
    return float(np.mean(rho)) if rho.size else 0.0


@register_measure("procrustes", similarity=False)
def procrustes(X: Array, Y: Array) -> float:
    """Orthogonal Procrustes distance (Ding et al., NeurIPS 2021): a distance in [0, 2].

    min_R ||X̂ − ŶR||²_F = 2 − 2·||X̂ᵀŶ||_* for centered, Frobenius-normalized X̂, Ŷ; the
    nuclear norm of the d1×d2 cross product equals that of the zero-padded square one, so
    d1 ≠ d2 needs no padding. 0 for X vs a rotated, scaled, translated X; 2.0 when either
    input is constant. Lower = more similar (``procrustes.similarity`` is False).
    """
    x, y = check_pair(X, Y, 2, "procrustes")
    m = centered_moments(x, y)
    cxx, cyy, cxy = m.clean()
    nx, ny = float(torch.trace(cxx)), float(torch.trace(cyy))
    if not (nx > 0.0 and ny > 0.0):
        return 2.0
    nuc = float(torch.linalg.svdvals(cxy).sum()) / (nx * ny) ** 0.5
    return float(min(max(2.0 - 2.0 * nuc, 0.0), 2.0))
