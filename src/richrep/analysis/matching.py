"""Unit-level comparisons from "Convergent Learning: Do different neural networks learn the
same representations?" (Li, Yosinski, Clune, Lipson & Hopcroft, ICLR 2016 / FE workshop 2015).

* :func:`correlation_matrix`: Pearson correlation of every unit of X with every unit of Y.
* :func:`match_units`: one-to-one matching (maximum-weight bipartite assignment) or
  semi-matching (each unit of X its best partner in Y); matched correlations sorted decreasing.
* :func:`sparse_prediction`: predict each unit of Y from all units of X by L1-regularized
  regression over a λ path; mean normalized squared error and mean nonzero weights per λ.
* :func:`spectral_clusters`: spectral clustering of the units of both networks on |correlation|;
  how many clusters mix units of both networks.

Dead units (constant over the samples, up to the input precision) have no correlation: it is
defined as 0 in :func:`correlation_matrix`, and the other functions leave dead units out and
report them (``dead_x``, ``dead_y``), so nothing is ever NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from richrep.analysis._common import Array, centered_moments, check_pair, dead_mask, feature_matrix
from richrep.errors import ConfigError, DataError


def _corr(x: torch.Tensor, y: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlations (float64 numpy) and dead masks of x and y (y=None: x with itself)."""
    m = centered_moments(x, y, full_self=y is None)
    assert m.shift_x is not None
    mx = m.shift_x + m.sx / m.n
    if y is None:
        cxy = m.cxx()
        var_x = var_y = torch.diagonal(cxy) / m.n
        dx = dy = dead_mask(var_x, mx, x.dtype)
    else:
        assert m.shift_y is not None
        cxy = m.cxy()
        var_x, var_y = m.cxx() / m.n, m.cyy() / m.n
        dx = dead_mask(var_x, mx, x.dtype)
        dy = dead_mask(var_y, m.shift_y + m.sy / m.n, y.dtype)
    sx = torch.where(dx, torch.ones_like(var_x), var_x.sqrt())
    sy = torch.where(dy, torch.ones_like(var_y), var_y.sqrt())
    r = cxy / m.n / torch.outer(sx, sy)
    r[dx, :] = 0.0
    r[:, dy] = 0.0
    return r.clamp(-1.0, 1.0).cpu().numpy(), dx.cpu().numpy(), dy.cpu().numpy()


def dead_units(X: Array) -> np.ndarray:
    """Indices of the units of X that are constant over the rows (std ≤ 16·eps·|mean|)."""
    x = feature_matrix(X, "X")
    m = centered_moments(x, full_self=False)
    assert m.shift_x is not None
    return np.flatnonzero(dead_mask(m.cxx() / m.n, m.shift_x + m.sx / m.n, x.dtype).cpu().numpy())


def correlation_matrix(X: Array, Y: Array | None = None) -> np.ndarray:
    """Pearson correlations (d1×d2, float64) between the units of X and of Y (Li et al. 2015).

    ``Y=None`` gives X's own d1×d1 matrix. A dead (constant) unit has correlation 0 with
    every unit, itself included.
    """
    if Y is None:
        x = feature_matrix(X, "X")
        if x.shape[0] < 2:
            raise DataError(f"correlation_matrix needs at least 2 rows (samples); got {x.shape[0]}")
        return _corr(x, None)[0]
    x, y = check_pair(X, Y, 2, "correlation_matrix")
    return _corr(x, y)[0]


@dataclass(frozen=True)
class Matching:
    """Matched units, best first: X unit ``x_units[k]`` ↔ Y unit ``y_units[k]``.

    ``correlations`` is decreasing (the curve against unit rank, Li et al. 2015 Fig. 2);
    ``dead_x``/``dead_y`` are the constant units left out of the matching.
    """

    method: str
    x_units: np.ndarray
    y_units: np.ndarray
    correlations: np.ndarray
    dead_x: np.ndarray
    dead_y: np.ndarray
    d1: int

    def partners(self) -> np.ndarray:
        """For each unit of X, the index of its partner in Y (−1 when unmatched or dead)."""
        out = np.full(self.d1, -1, dtype=np.int64)
        out[self.x_units] = self.y_units
        return out


def match_units(X: Array, Y: Array, method: str = "one_to_one", absolute: bool = False) -> Matching:
    """Match the units of X to the units of Y by correlation (Li et al. 2015).

    ``method="one_to_one"``: maximum-weight bipartite matching (Hungarian algorithm, scipy's
    ``linear_sum_assignment``), min(d1, d2) pairs; ``"semi"``: semi-matching, each unit of X
    paired with its most correlated unit in Y (several may share one). ``absolute=True`` scores
    pairs by |correlation| (the reported correlations are then absolute values too).
    """
    if method not in ("one_to_one", "semi"):
        raise ConfigError(f"match_units: method must be 'one_to_one' or 'semi'; got {method!r}")
    x, y = check_pair(X, Y, 2, "match_units")
    r, dx, dy = _corr(x, y)
    score = np.abs(r) if absolute else r
    live_x, live_y = np.flatnonzero(~dx), np.flatnonzero(~dy)
    s = score[np.ix_(live_x, live_y)]
    if s.size == 0:
        rows = cols = np.zeros(0, dtype=np.int64)
    elif method == "one_to_one":
        rows, cols = linear_sum_assignment(s, maximize=True)
    else:
        rows, cols = np.arange(s.shape[0]), s.argmax(1)
    vals = s[rows, cols]
    order = np.argsort(-vals, kind="stable")
    return Matching(
        method=method,
        x_units=live_x[rows[order]].astype(np.int64),
        y_units=live_y[cols[order]].astype(np.int64),
        correlations=vals[order],
        dead_x=np.flatnonzero(dx),
        dead_y=np.flatnonzero(dy),
        d1=x.shape[1],
    )


# --- sparse prediction -----------------------------------------------------------------------


@dataclass(frozen=True)
class SparsePrediction:
    """Lasso path results: per λ (``alphas``, decreasing), the normalized squared error
    (error / variance) averaged over the live units of Y (``nse``) and the mean number of
    nonzero weights (``nonzero``); ``nse_units`` is per unit (rows: ``units``)."""

    alphas: np.ndarray
    nse: np.ndarray
    nonzero: np.ndarray
    nse_units: np.ndarray
    units: np.ndarray
    dead_y: np.ndarray


def _standardize(
    t: torch.Tensor, mean: torch.Tensor | None = None, sd: torch.Tensor | None = None
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, np.ndarray]:
    t64 = t.to(torch.float64)
    if mean is None or sd is None:
        mean = t64.mean(0)
        var = (t64 - mean).square().mean(0)
        dead = dead_mask(var, mean, t.dtype)
        sd = torch.where(dead, torch.full_like(var, np.inf), var.sqrt())
    z = ((t64 - mean) / sd).cpu().numpy()
    return np.asfortranarray(z), mean, sd, np.isinf(sd.cpu().numpy())


def _nanmean0(a: np.ndarray, size: int) -> np.ndarray:
    """Column means over the units with a defined error (a unit constant on held-out rows has
    none); zeros when no unit has one."""
    ok = ~np.isnan(a).any(1)
    return a[ok].mean(0) if ok.any() else np.zeros(size)


def _alpha_grid(
    alphas: Sequence[float] | None, abs_xy: np.ndarray, n: int, n_alphas: int, eps: float
) -> np.ndarray:
    """The λ path, largest first: ``alphas`` as given, or ``n_alphas`` values log-spaced from
    the smallest λ that zeroes every weight (``max |XᵀY| / n``) down to ``eps`` times it."""
    if alphas is None:
        top = float(abs_xy.max()) / n if abs_xy.size else 1.0
        top = top if top > 0 else 1.0
        return top * np.logspace(0.0, np.log10(eps), n_alphas)
    grid = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]
    if grid.size == 0 or not np.all(grid > 0):
        raise ConfigError(f"sparse_prediction: alphas must be positive; got {list(alphas)}")
    return grid


def sparse_prediction(
    X: Array,
    Y: Array,
    alphas: Sequence[float] | None = None,
    n_alphas: int = 20,
    eps: float = 1e-3,
    X_eval: Array | None = None,
    Y_eval: Array | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> SparsePrediction:
    """Predict each unit of Y from all units of X with a Lasso path (Li et al. 2015, §4).

    Both inputs are standardized (zero mean, unit variance; dead units of X become zero
    columns, dead units of Y are left out). Each unit gets its own Lasso,
    ``sklearn.linear_model.lasso_path``, sharing the precomputed Gram matrix XᵀX and XᵀY.
    The objective is (1/2n)||y − Xw||² + λ||w||₁. By default λ runs over ``n_alphas`` values,
    log-spaced from the smallest λ that zeroes every weight down to ``eps`` times it. The
    error is measured on the fitted rows, or on ``X_eval``/``Y_eval`` (standardized with the
    fitted rows' statistics) when given; it is normalized by the variance of each unit (on
    held-out rows: by the error of predicting the fitted mean, so 1 means "no better than a
    constant"; units constant on the held-out rows are left out of the mean).
    """
    x, y = check_pair(X, Y, 2, "sparse_prediction")
    if n_alphas < 1 or not 0 < eps < 1:
        raise ConfigError(
            f"sparse_prediction: need n_alphas >= 1 and 0 < eps < 1; got {n_alphas} and {eps}"
        )
    from sklearn.linear_model import lasso_path

    n = x.shape[0]
    zx, mx, sdx, _ = _standardize(x)
    zy, my, sdy, dead_y = _standardize(y)
    units = np.flatnonzero(~dead_y)
    gram = zx.T @ zx
    xy = zx.T @ zy
    grid = _alpha_grid(alphas, np.abs(xy[:, units]), n, n_alphas, eps)
    if (X_eval is None) != (Y_eval is None):
        raise ConfigError("sparse_prediction: give both X_eval and Y_eval, or neither")
    ev = None
    if X_eval is not None and Y_eval is not None:
        xe, ye = check_pair(X_eval, Y_eval, 1, "sparse_prediction (eval)")
        if (xe.shape[1], ye.shape[1]) != (x.shape[1], y.shape[1]):
            raise DataError(
                f"X_eval/Y_eval have {xe.shape[1]}/{ye.shape[1]} columns; "
                f"X/Y have {x.shape[1]}/{y.shape[1]}"
            )
        ev = (_standardize(xe, mx, sdx)[0], _standardize(ye, my, sdy)[0])
    nse = np.zeros((units.size, grid.size))
    nonzero = np.zeros((units.size, grid.size))
    for row, j in enumerate(units):
        _, coefs, _ = lasso_path(
            zx,
            zy[:, j],
            alphas=grid,
            precompute=gram,
            Xy=xy[:, j],
            copy_X=False,
            max_iter=max_iter,
            tol=tol,
        )
        if ev is None:  # ||y − Xw||²/n from the Gram matrix (var y = 1)
            quad = np.einsum("ik,ij,jk->k", coefs, gram, coefs)
            err = 1.0 + (quad - 2.0 * (xy[:, j] @ coefs)) / n
        else:  # held out: relative to predicting the fitted mean (all-zero weights give 1)
            base = float((ev[1][:, j] ** 2).mean())
            resid = ((ev[1][:, [j]] - ev[0] @ coefs) ** 2).mean(0)
            err = resid / base if base > 0 else np.full(grid.size, np.nan)
        nse[row] = np.maximum(err, 0.0)
        nonzero[row] = (coefs != 0).sum(0)
    return SparsePrediction(
        alphas=grid,
        nse=_nanmean0(nse, grid.size),
        nonzero=nonzero.mean(0) if units.size else np.zeros(grid.size),
        nse_units=nse,
        units=units,
        dead_y=np.flatnonzero(dead_y),
    )


# --- spectral clustering ---------------------------------------------------------------------


@dataclass(frozen=True)
class Clustering:
    """Spectral clusters of the units of X and Y together (Li et al. 2015, §5).

    ``labels_x``/``labels_y``: cluster of each unit (−1 for dead units, left out);
    ``counts[c] = (units of X, units of Y)`` in cluster c; ``sizes`` = counts.sum(1);
    ``n_mixed``: clusters holding units of both networks.
    """

    labels_x: np.ndarray
    labels_y: np.ndarray
    counts: np.ndarray
    sizes: np.ndarray
    n_mixed: int


def spectral_clusters(X: Array, Y: Array, n_clusters: int, seed: int = 0) -> Clustering:
    """Cluster the d1+d2 units of both networks by spectral clustering (Li et al. 2015).

    The affinity is the absolute Pearson correlation matrix of all units (diagonal 1),
    given to ``sklearn.cluster.SpectralClustering(affinity="precomputed")``.
    """
    x, y = check_pair(X, Y, 2, "spectral_clusters")
    from sklearn.cluster import SpectralClustering

    d1 = x.shape[1]
    dt = x.dtype if x.dtype == y.dtype else torch.float64
    z = torch.cat([x.to(dt), y.to(dt)], 1)
    r, dead, _ = _corr(z, None)
    live = np.flatnonzero(~dead)
    if not 1 <= n_clusters <= live.size:
        raise ConfigError(
            f"spectral_clusters: n_clusters must be between 1 and the {live.size} live units; "
            f"got {n_clusters}"
        )
    aff = np.abs(r[np.ix_(live, live)])
    np.fill_diagonal(aff, 1.0)
    if n_clusters == 1:
        lab = np.zeros(live.size, dtype=np.int64)
    else:
        sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed)
        lab = sc.fit_predict(aff).astype(np.int64)
    labels = np.full(z.shape[1], -1, dtype=np.int64)
    labels[live] = lab
    lx, ly = labels[:d1], labels[d1:]
    counts = np.stack([np.bincount(v[v >= 0], minlength=n_clusters) for v in (lx, ly)], 1)
    return Clustering(
        labels_x=lx,
        labels_y=ly,
        counts=counts,
        sizes=counts.sum(1),
        n_mixed=int(((counts[:, 0] > 0) & (counts[:, 1] > 0)).sum()),
    )
