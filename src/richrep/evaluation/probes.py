"""Linear probes on frozen features, as scikit-learn estimators.

:class:`LinearProbe` is L2-regularized multinomial logistic regression whose strength is chosen
on validation data, solved full-batch with torch (CPU or GPU):

* features are standardized with the statistics of ``X`` (``mean_``, ``scale_``; a constant
  column gets scale 1 and weight 0 and is left out of the computation);
* the objective for a value ``C`` is scikit-learn's, ``C * sum_i CE_i + ||W||^2 / 2`` with the
  intercept unpenalized, on the standardized features (a ``StandardScaler`` +
  ``LogisticRegression(C=C)`` pipeline has the same minimizer for three classes or more; with two
  classes the multinomial form used here equals scikit-learn's binary model at ``2 * C``);
* the grid ``Cs`` is solved from the strongest regularization to the weakest, each value
  warm-started from the previous solution *and* its L-BFGS curvature pairs (the penalty is
  quadratic, so stored pairs are corrected exactly for the new strength);
* the solver is L-BFGS preconditioned by ``a * Sigma + lam * I`` (``Sigma`` the feature
  covariance, ``lam = 1 / (C n)``): cat-K features of K networks are strongly correlated, and
  this preconditioner removes most of that ill-conditioning for the price of a d x d Cholesky;
* the C with the best validation accuracy is kept (ties go to the stronger regularization),
  then the model is refit on train + validation with that C, warm-started.

:class:`NearestMeanProbe` is a class-centroid classifier on standardized features.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from richrep.errors import ConfigError, DataError

DEFAULT_CS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Preconditioner: the CE Hessian is about ``a * Sigma`` (a = 1/k at uniform predictions, lower
# as they sharpen); what matters is the ratio lam / a: 0.1 to 0.3 measured alike on cat-K
# features (1.0 took ~35% more evaluations).
_PRECOND_A = 0.2
_GRAM_ROWS = 16384
_MEMORY = 20  # L-BFGS curvature pairs (10 took ~20% more evaluations on cat-K features)


# ------------------------------------------------------------------------------------------------
# Input handling


def _resolve_device(device: str | torch.device, X: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if isinstance(X, torch.Tensor):
            return X.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r} is not a torch device ({e})") from None


def _check_finite(X: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        count = int(bad.sum())
        row, col = (int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"{name} contains {count} NaN or inf value(s) (first at row {row}, column {col}); "
            f"probes need finite features"
        )


def _as_features(est: BaseEstimator, X: Any, name: str, *, reset: bool) -> Any:
    """Validate features: a torch tensor stays a tensor (any device), anything else goes through
    scikit-learn's ``validate_data`` (so feature names, n_features_in_ and error messages follow
    scikit-learn); NaN/inf raise :class:`DataError` either way."""
    if isinstance(X, torch.Tensor):
        if X.ndim != 2:
            raise DataError(f"{name} must be 2-D (n_samples, n_features), got {tuple(X.shape)}")
        if X.is_complex():
            raise DataError(f"{name} is complex; probes need real features")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise DataError(f"{name} is empty (shape {tuple(X.shape)})")
        if not torch.is_floating_point(X):
            X = X.to(torch.float64)
        elif X.dtype in (torch.float16, torch.bfloat16):
            X = X.to(torch.float32)  # statistics and solver need at least float32
        _check_finite(X, name)
        if reset:
            est.n_features_in_ = int(X.shape[1])
            if hasattr(est, "feature_names_in_"):
                del est.feature_names_in_
        elif X.shape[1] != est.n_features_in_:
            raise DataError(
                f"{name} has {X.shape[1]} features, but {type(est).__name__} is expecting "
                f"{est.n_features_in_} features as input"
            )
        return X
    X = validate_data(est, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite=False)
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    _check_finite(Xt, name)
    return Xt


def _as_labels(y: Any, n: int, name: str) -> np.ndarray:
    if y is None:
        raise DataError(
            f"{name} is None: this classifier requires y to be passed, but the target y is None"
        )
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)  # scikit-learn's DataConversionWarning
    if y.ndim != 1:
        raise DataError(f"{name} must be 1-D (n_samples,), got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"features have {n} rows but {name} has {y.shape[0]} labels")
    check_classification_targets(y)
    if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
        raise DataError(f"{name} contains NaN or inf labels")
    return y


def _fit_inputs(est: BaseEstimator, X: Any, y: Any) -> tuple[torch.Tensor, np.ndarray]:
    if not isinstance(X, torch.Tensor) and y is None:
        # let scikit-learn phrase the "y is required" error
        validate_data(est, X, y, dtype=[np.float64, np.float32], ensure_all_finite=False)
    Xt = _as_features(est, X, "X", reset=True)
    y = _as_labels(y, Xt.shape[0], "y")
    return Xt, y


_CHUNK = 8192  # rows per block when streaming over the features


def _standardize_stats(X: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale and the mask of non-constant columns of X, in one pass over row blocks:
    shifted by the first row (so that E[x^2] - E[x]^2 does not cancel), summed in float64
    without a float64 copy of X. A column is constant if all its values are equal, or if its
    variance is at the level of round-off (scikit-learn's StandardScaler rule)."""
    n = X.shape[0]
    x0 = X[0].clone()
    s1 = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    s2 = torch.zeros_like(s1)
    varies = torch.zeros(X.shape[1], dtype=torch.bool, device=X.device)
    for i in range(0, n, _CHUNK):
        c = X[i : i + _CHUNK] - x0
        s1 += c.sum(0, dtype=torch.float64)
        s2 += (c * c).sum(0, dtype=torch.float64)
        varies |= (c != 0).any(0)
    shift = s1 / n
    mean = (x0.to(torch.float64) + shift).cpu().numpy()
    var = (s2 / n - shift * shift).clamp_min(0).cpu().numpy()
    eps = np.finfo(np.float64).eps
    active = varies.cpu().numpy() & (var > n * eps * var + (n * mean * eps) ** 2)
    scale = np.where(active, np.sqrt(var), 1.0)
    return mean, scale, active


def _standardized_t(
    parts: list[tuple[torch.Tensor, np.ndarray | None]],
    mean: np.ndarray,
    scale: np.ndarray,
    active: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``((X[rows][:, active] - mean) / scale)^T`` of the parts stacked row-wise, as one
    contiguous (d_active, n) matrix of the solver dtype on the device, built block by block."""
    cols = torch.as_tensor(np.flatnonzero(active), device=device)
    m = torch.as_tensor(mean[active], device=device, dtype=dtype)
    s = torch.as_tensor(scale[active], device=device, dtype=dtype)
    sizes = [A.shape[0] if rows is None else rows.size for A, rows in parts]
    out = torch.empty(cols.numel(), sum(sizes), dtype=dtype, device=device)
    at = 0
    for (A, rows), size in zip(parts, sizes, strict=True):
        for i in range(0, size, _CHUNK):
            j = min(size, i + _CHUNK)
            block = A[i:j] if rows is None else A[torch.as_tensor(rows[i:j], device=A.device)]
            block = block.to(device).index_select(1, cols).to(dtype)
            out[:, at + i : at + j] = ((block - m) / s).t()
        at += size
    return out


def _split_val(y_idx: np.ndarray, val_fraction: float, seed: int | None) -> tuple[np.ndarray, ...]:
    """Stratified split: ``round(val_fraction * n_c)`` examples of class c held out, at least one
    for every class with 2 or more examples and never its last one (a class with a single example
    stays whole in the training part)."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(y_idx):
        idx = np.flatnonzero(y_idx == c)
        idx = idx[rng.permutation(idx.size)]
        n_val = min(idx.size - 1, max(1, int(round(val_fraction * idx.size))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ------------------------------------------------------------------------------------------------
# The solver


class _Multinomial:
    """``f(W, b) = mean_i CE(x_i W + b, y_i) + lam / 2 ||W||^2`` and its gradient, full batch.

    Parameters are stacked as ``Wt = [W; b]`` of shape (d + 1, k). Only ``X^T`` (d, n) is kept:
    logits are computed as (k, n) = W^T X^T, so the softmax reductions run over the short class
    axis of long contiguous rows, and the gradient as X^T E^T; both products were the fastest
    layouts measured on CPU.
    """

    def __init__(self, XT: torch.Tensor, y: torch.Tensor, k: int) -> None:
        self.XT = XT  # (d, n) standardized features (rows may be a strided view), on the device
        self.d, self.n = XT.shape
        self.k = k
        # flat positions of the true-class logits in the (k, n) logit matrix
        self.target = y.to(torch.long) * self.n + torch.arange(self.n, device=XT.device)
        self.evals = 0
        self.flops = 0

    def __call__(self, Wt: torch.Tensor, lam: float) -> tuple[float, torch.Tensor]:
        W, b = Wt[:-1], Wt[-1]
        Z = torch.addmm(b[:, None], W.t(), self.XT)  # (k, n) logits
        lse = torch.logsumexp(Z, 0)
        z_true = Z.view(-1)[self.target]
        # accumulate the loss in float64: line searches compare values that differ by ~1e-7
        ce = (lse.to(torch.float64).sum() - z_true.to(torch.float64).sum()) / self.n
        E = torch.exp(Z - lse)
        E.view(-1)[self.target] -= 1.0  # softmax - onehot
        g = torch.empty_like(Wt)
        torch.mm(self.XT, E.t(), out=g[:-1])
        g[:-1] /= self.n
        g[:-1] += lam * W
        g[-1] = E.sum(1) / self.n
        f = ce.item() + 0.5 * lam * float((W.to(torch.float64) ** 2).sum())
        self.evals += 1
        self.flops += 4 * self.n * self.d * self.k
        return f, g


class _Preconditioner:
    """Applies ``M^{-1}`` with ``M = blockdiag(a * Sigma + lam * I, a)`` (the last row is the
    intercept, whose "feature" is the constant 1, of unit second moment like a standardized one).
    ``M^{-1}`` is formed once per C (a d x d Cholesky in float64): applying it is one small
    matmul per L-BFGS iteration."""

    def __init__(self, sigma: torch.Tensor, lam: float, dtype: torch.dtype) -> None:
        a = _PRECOND_A
        d = sigma.shape[0]
        # a floor keeps M safely positive definite for huge C; it only shapes the preconditioner
        lam = max(lam, 1e-8 * a * float(sigma.diagonal().max()) if d else 1.0, 1e-12)
        M = a * sigma + lam * torch.eye(d, dtype=sigma.dtype, device=sigma.device)
        self.Minv = torch.cholesky_inverse(torch.linalg.cholesky(M)).to(dtype)
        self.inv_a = 1.0 / a

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(q)
        # (q^T M^-1)^T: MKL's float32 path for M^-1 @ q (d x d times d x k) measured 5-20x slower
        r[:-1] = (q[:-1].t() @ self.Minv).t()
        torch.mul(q[-1], self.inv_a, out=r[-1])
        return r


class _LBFGSMemory:
    """L-BFGS curvature pairs, stored stacked so that the two-loop recursion costs a handful of
    (m x p) matrix-vector products plus an m x m scalar recursion on the host, instead of ~6m
    tiny vector operations (which dominated the iteration time on a busy 2-core machine)."""

    def __init__(self, m: int | None = None) -> None:
        self.m = _MEMORY if m is None else m
        self.S: torch.Tensor | None = None  # (pairs, p), oldest first
        self.Y: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.S is None else self.S.shape[0]

    def clear(self) -> None:
        self.S = self.Y = None

    def _update(self) -> None:
        sy = (self.S * self.Y).sum(1)
        keep = sy > 0
        if not bool(keep.all()):
            self.S, self.Y = self.S[keep], self.Y[keep]
        if self.S.shape[0] == 0:
            self.clear()
            return
        self.SY = (self.S @ self.Y.t()).to(torch.float64).cpu().numpy()  # SY[i, j] = s_i . y_j
        self.rho = 1.0 / np.diag(self.SY)

    def shift_penalty(self, dlam: float, n_weights: int) -> None:
        """The penalty is quadratic, so for a new strength ``y <- y + dlam * s`` is exact (on
        the weights: the first ``n_weights`` entries; the intercept is not penalized)."""
        if self.S is None:
            return
        self.Y = self.Y.clone()
        self.Y[:, :n_weights] += dlam * self.S[:, :n_weights]
        self._update()

    def push(self, s: torch.Tensor, y: torch.Tensor) -> None:
        s, y = s.reshape(1, -1), y.reshape(1, -1)
        sy = float((s * y).sum())
        if not sy > 1e-10 * float((y * y).sum()):
            return
        if self.S is None:
            self.S, self.Y = s, y
        else:
            self.S = torch.cat([self.S[-(self.m - 1) :], s])
            self.Y = torch.cat([self.Y[-(self.m - 1) :], y])
        self._update()

    def direction(self, g: torch.Tensor, precond: _Preconditioner) -> torch.Tensor:
        """``-H g`` by the two-loop recursion with ``H0 = gamma M^{-1}``."""
        if self.S is None:
            return precond(g).neg_()
        shape, g = g.shape, g.reshape(-1)
        S, Y, SY, rho = self.S, self.Y, self.SY, self.rho
        m = S.shape[0]
        Sg = (S @ g).to(torch.float64).cpu().numpy()
        alpha = np.zeros(m)
        for i in range(m - 1, -1, -1):  # newest to oldest
            alpha[i] = rho[i] * (Sg[i] - SY[i, i + 1 :] @ alpha[i + 1 :])
        q = g - Y.t() @ torch.as_tensor(alpha, dtype=g.dtype, device=g.device)
        r = precond(q.view(shape))
        y_last = Y[-1].view(shape)
        r *= SY[-1, -1] / float((y_last * precond(y_last)).sum())
        r = r.reshape(-1)
        Yr = (Y @ r).to(torch.float64).cpu().numpy()
        beta = np.zeros(m)
        for i in range(m):  # oldest to newest; y_i . s_j = SY[j, i]
            beta[i] = rho[i] * (Yr[i] + SY[:i, i] @ (alpha[:i] - beta[:i]))
        r = r + S.t() @ torch.as_tensor(alpha - beta, dtype=g.dtype, device=g.device)
        return r.neg_().view(shape)


def _minimize(
    obj: _Multinomial,
    Wt: torch.Tensor,
    lam: float,
    precond: _Preconditioner,
    memory: _LBFGSMemory,
    max_iter: int,
    tol: float,
    min_iter: int = 0,
) -> tuple[torch.Tensor, int, bool]:
    """Preconditioned L-BFGS with Armijo backtracking. Stops when the largest gradient entry and
    the L-BFGS estimate of ``2 (f - f*)`` (``-g.p``) are both at most ``tol``. Returns the solution,
    the number of iterations and whether it converged.

    Near the optimum the decrease of a step falls below the round-off of ``f`` (float32 logits);
    a step is then also accepted when ``f`` did not rise beyond that round-off and the decrease
    estimated from the gradients, ``t (g.p + g_new.p) / 2`` (exact for a quadratic), satisfies
    the Armijo condition (Hager & Zhang's "approximate Wolfe" idea)."""
    f, g = obj(Wt, lam)
    noise = 1e-6 if Wt.dtype in (torch.float32, torch.bfloat16, torch.float16) else 1e-13
    it = 0
    while True:
        p = memory.direction(g, precond)
        gp = float((g * p).sum())
        if not gp < 0:  # not a descent direction (round-off): restart, preconditioned gradient
            memory.clear()
            p = precond(g).neg_()
            gp = float((g * p).sum())
        if float(g.abs().max()) <= tol and -gp <= tol and (it >= min_iter or not gp < 0):
            return Wt, it, True
        if it >= max_iter or not gp < 0:
            return Wt, it, False
        it += 1
        t = 1.0
        for _ in range(30):
            Wn = Wt + t * p
            fn, gn = obj(Wn, lam)
            if fn <= f + 1e-4 * t * gp:
                break
            if fn <= f + noise * abs(f) and t * (gp + float((gn * p).sum())) / 2 <= 1e-4 * t * gp:
                break
            # minimizer of the quadratic through f, f'(0) = gp and f(t), kept in [0.1 t, 0.5 t]
            curv = fn - f - gp * t
            t_new = -gp * t * t / (2 * curv) if curv > 0 else 0.1 * t
            t = min(max(t_new, 0.1 * t), 0.5 * t)
        else:  # no decrease measurable at this precision: as converged as it gets
            return Wt, it, float(g.abs().max()) <= 10 * tol
        memory.push(Wn - Wt, gn - g)
        Wt, f, g = Wn, fn, gn


# ------------------------------------------------------------------------------------------------
# Estimators


def _solve_path(
    XT: torch.Tensor,
    labels: np.ndarray,
    n_train: int,
    Cs: np.ndarray,
    k: int,
    max_iter: int,
    tol: float,
    refit: bool,
) -> tuple[torch.Tensor, list[int], list[float], float, bool, int, int]:
    """Solve the grid from strong to weak regularization with warm starts on the training part
    (the first ``n_train`` columns of the standardized ``XT``), choose C on the rest (the
    validation part, if any), refit on both. Returns the parameters [W; b], iterations (per C,
    then the refit), validation accuracies, the chosen C, whether every solve converged, function
    evaluations and matmul flops."""
    device = XT.device
    y_all = torch.as_tensor(labels, device=device)
    has_val = n_train < XT.shape[1]
    obj = _Multinomial(XT[:, :n_train], y_all[:n_train], k)
    sigma = _covariance(obj.XT)
    Wt = torch.zeros(obj.d + 1, k, dtype=XT.dtype, device=device)
    memory = _LBFGSMemory()
    n_iter, scores, solutions, converged = [], [], [], True
    lam_prev = None
    for C in Cs:
        lam = 1.0 / (C * obj.n)
        if lam_prev is not None:
            memory.shift_penalty(lam - lam_prev, obj.d * k)  # keep the pairs, corrected
        lam_prev = lam
        precond = _Preconditioner(sigma, lam, XT.dtype)
        Wt, it, ok = _minimize(obj, Wt, lam, precond, memory, max_iter, tol)
        n_iter.append(it)
        converged &= ok
        solutions.append(Wt)
        scores.append(_accuracy(XT[:, n_train:], y_all[n_train:], Wt) if has_val else math.nan)
    best = int(np.argmax(scores)) if has_val else 0  # the first maximum: the strongest
    Wt, C_best = solutions[best], float(Cs[best])
    evals, flops = obj.evals, obj.flops
    del obj, solutions

    refit_iter = 0
    if has_val and refit:
        obj = _Multinomial(XT, y_all, k)
        lam = 1.0 / (C_best * obj.n)
        # at least one step: the warm start solves a different (larger) problem
        precond = _Preconditioner(sigma, lam, XT.dtype)
        Wt, refit_iter, ok = _minimize(
            obj, Wt, lam, precond, _LBFGSMemory(), max_iter, tol, min_iter=1
        )
        converged &= ok
        evals, flops = evals + obj.evals, flops + obj.flops
    return Wt, n_iter + [refit_iter], scores, C_best, converged, evals, flops


_SMALL = 1 << 20  # features (n x d) below which a CPU solve runs on one thread


@contextlib.contextmanager
def _one_thread_if_small(size: int, device: torch.device) -> Iterator[None]:
    """Run a small CPU solve on one thread (restored afterwards). Its matmuls gain nothing from
    threads, while idle OpenMP workers spinning between its many small operations made it up to
    40x slower on a busy 2-core machine (6.5 s instead of 0.15 s for sklearn's digits)."""
    old = torch.get_num_threads()
    if device.type != "cpu" or size > _SMALL or old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_FAST_MATMUL_OK: bool | None = None


@contextlib.contextmanager
def _fast_matmul(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """On CPU, run float32 matmuls through oneDNN's "bf16" fpmath mode for the duration of the
    solve (the flag is process-wide; it is restored afterwards). On an AMX CPU this measured 2-3x
    faster for the probe's skinny products *and* as accurate as IEEE float32 (relative error
    ~2e-7: the operands are not simply rounded to bfloat16). A one-off check on this machine
    confirms the accuracy before the mode is used; otherwise nothing changes."""
    global _FAST_MATMUL_OK
    mm = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if device.type != "cpu" or dtype != torch.float32 or not hasattr(mm, "fp32_precision"):
        yield
        return
    old = mm.fp32_precision
    try:
        if _FAST_MATMUL_OK is None:
            gen = torch.Generator().manual_seed(0)
            A = torch.randn(16, 512, generator=gen)
            A *= 1 + 1e-3 * torch.rand(16, 512, generator=gen)  # not bfloat16-representable
            B = torch.randn(512, 4096, generator=gen)
            exact = A.double() @ B.double()
            try:
                mm.fp32_precision = "bf16"
                err = float(((A @ B).double() - exact).abs().max() / exact.abs().max())
                _FAST_MATMUL_OK = err < 1e-5
            except (RuntimeError, ValueError, TypeError):
                _FAST_MATMUL_OK = False
            mm.fp32_precision = old
        if _FAST_MATMUL_OK:
            mm.fp32_precision = "bf16"
        yield
    finally:
        mm.fp32_precision = old


class _TorchLabels(ClassifierMixin):
    """``score`` (mean accuracy) that also takes ``y`` as a torch tensor."""

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        return super().score(X, y, sample_weight)


class LinearProbe(_TorchLabels, BaseEstimator):
    """L2-regularized multinomial logistic regression, strength chosen on validation data.

    Parameters
    ----------
    Cs : float or sequence of float
        Inverse regularization strengths (scikit-learn's ``C``: minimize
        ``C * sum CE + ||W||^2 / 2`` on standardized features, intercept unpenalized). A single
        value skips the validation split and fits on all the data.
    val_fraction : float in (0, 1)
        Fraction of each class held out to choose C when no ``X_val`` is given (see ``fit``).
    max_iter : int
        L-BFGS iterations at most, per value of C and for the final refit.
    tol : float
        Stop when the largest gradient entry of the mean objective (scikit-learn's ``tol``) and
        the L-BFGS estimate of twice the remaining suboptimality are both below ``tol``.
    refit : bool
        Refit on train + validation with the chosen C (warm-started). If False, the model of the
        chosen C trained on the training part is kept.
    random_state : int or None
        Seed of the validation split.
    device : str
        ``"auto"`` (a tensor's own device, else CUDA when available, else CPU) or a torch device.
    dtype : {"float32", "float64"}
        Solver precision (the loss is always accumulated in float64).

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    coef_ : ndarray (n_classes, n_features), in the original (unstandardized) feature space, so
        ``decision_function(X) = X @ coef_.T + intercept_`` (binary: the difference of the two
        columns, as scikit-learn)
    intercept_ : ndarray (n_classes,)
    mean_, scale_ : ndarray (n_features,), the standardization (scale 1 for constant columns)
    Cs_ : ndarray, the grid in increasing order (strongest regularization first)
    scores_ : ndarray, validation accuracy for each of ``Cs_`` (NaN when nothing was held out)
    C_ : float, the chosen value
    n_iter_ : ndarray (len(Cs_) + 1,), L-BFGS iterations for each C then for the refit (0 if none)
    solver_stats_ : dict, function evaluations, matmul flops (4 n d k per evaluation), seconds
        of the whole fit, and whether every solve converged
    device_ : str
    n_features_in_, feature_names_in_ : as in scikit-learn
    """

    def __init__(
        self,
        Cs: float | Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.2,
        max_iter: int = 100,
        tol: float = 1e-4,
        refit: bool = True,
        random_state: int | None = 0,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        self.Cs = Cs
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.tol = tol
        self.refit = refit
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    # -- parameters ------------------------------------------------------------------------------

    def _check_params(self) -> tuple[np.ndarray, torch.dtype]:
        Cs = np.atleast_1d(np.asarray(self.Cs, dtype=np.float64))
        if Cs.ndim != 1 or Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
            raise ConfigError(f"Cs must be positive finite numbers, got {self.Cs!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not (isinstance(self.max_iter, int | np.integer) and self.max_iter >= 1):
            raise ConfigError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.tol, int | float) and self.tol > 0):
            raise ConfigError(f"tol must be positive, got {self.tol!r}")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        return np.unique(Cs), _DTYPES[self.dtype]

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> LinearProbe:
        """Fit the probe; C is chosen on (X_val, y_val) when given, otherwise on a stratified
        ``val_fraction`` of (X, y) (see :func:`_split_val`; if no class has two examples nothing
        can be held out, and the grid value closest to C = 1, scikit-learn's default, is used
        with a warning). The final model is refit on everything given (``refit=True``)."""
        Cs, dtype = self._check_params()
        t_start = time.perf_counter()
        Xt, y = _fit_inputs(self, X, y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise DataError(
                f"y has only one class ({classes[0]!r}); a classifier needs examples of at "
                f"least 2 classes"
            )
        if (X_val is None) != (y_val is None):
            raise DataError("give both X_val and y_val, or neither")
        device = _resolve_device(self.device, X)
        self.classes_ = classes
        self.device_ = str(device)

        mean, scale, active = _standardize_stats(Xt)
        self.mean_, self.scale_ = mean, scale

        # rows of the training part first, then those of the validation part (if any)
        if X_val is not None:
            Xv = _as_features(self, X_val, "X_val", reset=False)
            yv = _as_labels(y_val, Xv.shape[0], "y_val")
            unknown = np.setdiff1d(np.unique(yv), classes)
            if unknown.size:
                raise DataError(
                    f"y_val holds labels absent from y: {unknown[:5].tolist()}; a probe cannot "
                    f"predict classes it was not trained on"
                )
            parts = [(Xt, None), (Xv, None)]
            labels, n_train = np.concatenate([y_idx, np.searchsorted(classes, yv)]), Xt.shape[0]
        else:
            tr = np.arange(y_idx.size)
            va = tr[:0]
            if Cs.size > 1:
                tr, va = _split_val(y_idx, float(self.val_fraction), self.random_state)
                if va.size == 0:
                    warnings.warn(
                        "no class has two examples, so no validation data can be held out to "
                        "choose C; using the grid value closest to C=1 (scikit-learn's default)",
                        UserWarning,
                        stacklevel=2,
                    )
                    Cs = Cs[[int(np.argmin(np.abs(np.log(Cs))))]]
            parts = [(Xt, np.concatenate([tr, va]))]
            labels, n_train = y_idx[np.concatenate([tr, va])], tr.size
        XT = _standardized_t(parts, mean, scale, active, dtype, device)
        del parts

        k = classes.size
        with _fast_matmul(device, dtype), _one_thread_if_small(XT.numel(), device):
            path = _solve_path(XT, labels, n_train, Cs, k, self.max_iter, self.tol, self.refit)
        Wt, n_iter, scores, C_best, converged, evals, flops = path
        if not converged:
            warnings.warn(
                f"LinearProbe: L-BFGS did not reach tol={self.tol:g} within max_iter="
                f"{self.max_iter} for every C (iterations: {n_iter}); increase max_iter",
                ConvergenceWarning,
                stacklevel=2,
            )

        # back to the original feature space
        W = Wt[:-1].to(torch.float64).cpu().numpy()
        b = Wt[-1].to(torch.float64).cpu().numpy()
        coef = np.zeros((k, Xt.shape[1]))
        coef[:, active] = (W / scale[active, None]).T
        self.coef_ = coef
        self.intercept_ = b - coef @ mean
        self.Cs_ = Cs
        self.scores_ = np.asarray(scores, dtype=np.float64)
        self.C_ = C_best
        self.n_iter_ = np.asarray(n_iter, dtype=np.int64)
        fast = bool(_FAST_MATMUL_OK) and device.type == "cpu" and dtype == torch.float32
        self.solver_stats_ = {
            "fast_matmul": fast,  # oneDNN's bf16 fpmath for float32 matmuls (see _fast_matmul)
            "evals": evals,
            "flops": flops,
            "seconds": time.perf_counter() - t_start,
            "converged": converged,
        }
        return self

    # -- prediction ------------------------------------------------------------------------------

    def _scores(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        Xt = _as_features(self, X, "X", reset=False)
        coef = torch.as_tensor(self.coef_, device=Xt.device)
        b = torch.as_tensor(self.intercept_, device=Xt.device)
        return torch.addmm(b, Xt.to(torch.float64), coef.t())

    def decision_function(self, X: Any) -> np.ndarray:
        """Class scores (n_samples, n_classes); for two classes the score of the second class
        minus the first's, shape (n_samples,), as scikit-learn."""
        Z = self._scores(X)
        if Z.shape[1] == 2:
            Z = Z[:, 1] - Z[:, 0]
        return Z.cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        return torch.softmax(self._scores(X), 1).cpu().numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return torch.log_softmax(self._scores(X), 1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        best = self._scores(X).argmax(1).cpu().numpy()  # checks fitted-ness first
        return self.classes_[best]


def _covariance(XT: torch.Tensor) -> torch.Tensor:
    """``X^T X / n`` (float64) from at most ``_GRAM_ROWS`` evenly spaced examples (columns of
    ``XT``), with the diagonal from all of them: a rare feature that a subsample misses must not
    look flat to the preconditioner (that made L-BFGS ~10x slower on real CNN features)."""
    step = max(1, math.ceil(XT.shape[1] / _GRAM_ROWS))
    S = XT[:, ::step]
    sigma = (S @ S.t()).to(torch.float64) / S.shape[1]
    if step > 1:
        diag = torch.zeros(XT.shape[0], dtype=torch.float64, device=XT.device)
        for i in range(0, XT.shape[1], _CHUNK):
            block = XT[:, i : i + _CHUNK]
            diag += (block * block).sum(1, dtype=torch.float64)
        sigma.diagonal().copy_(torch.maximum(diag / XT.shape[1], sigma.diagonal()))
    return sigma


@torch.no_grad()
def _accuracy(XT: torch.Tensor, y: torch.Tensor, Wt: torch.Tensor) -> float:
    pred = torch.addmm(Wt[-1][:, None], Wt[:-1].t(), XT).argmax(0)
    return float((pred == y).to(torch.float64).mean())


class NearestMeanProbe(_TorchLabels, BaseEstimator):
    """Class-centroid classifier on standardized features.

    Parameters
    ----------
    metric : {"cosine", "euclidean"}
        Cosine similarity to the centroids (highest wins) or Euclidean distance (lowest wins),
        both in the standardized space.
    device : str
        As :class:`LinearProbe`.

    Attributes
    ----------
    classes_, mean_, scale_ (scale 1 for constant columns), centroids_ (n_classes, n_features)
    in the standardized space, n_features_in_.
    """

    def __init__(self, metric: str = "cosine", device: str = "auto") -> None:
        self.metric = metric
        self.device = device

    def fit(self, X: Any, y: Any) -> NearestMeanProbe:
        if self.metric not in ("cosine", "euclidean"):
            raise ConfigError(f"metric must be 'cosine' or 'euclidean', got {self.metric!r}")
        Xt, y = _fit_inputs(self, X, y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise DataError(
                f"y has only one class ({classes[0]!r}); a classifier needs examples of at "
                f"least 2 classes"
            )
        device = _resolve_device(self.device, X)
        self.mean_, self.scale_, _ = _standardize_stats(Xt)
        Z = self._standardize(Xt.to(device))
        idx = torch.as_tensor(y_idx, device=device)
        sums = torch.zeros(classes.size, Z.shape[1], dtype=Z.dtype, device=device)
        sums.index_add_(0, idx, Z)
        counts = torch.bincount(idx, minlength=classes.size).to(Z.dtype)
        self.centroids_ = (sums / counts[:, None]).cpu().numpy()
        self.classes_ = classes
        return self

    def _standardize(self, X: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.mean_, device=X.device)
        s = torch.as_tensor(self.scale_, device=X.device)
        return (X.to(torch.float64) - m) / s

    def _similarity(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        Xt = _as_features(self, X, "X", reset=False)
        Z = self._standardize(Xt)
        Cn = torch.as_tensor(self.centroids_, device=Z.device)
        if self.metric == "cosine":
            Z = Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)
            Cn = Cn / Cn.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return Z @ Cn.t()
        # -||z - c||^2 up to a per-row constant
        return 2 * Z @ Cn.t() - (Cn * Cn).sum(1)

    def predict(self, X: Any) -> np.ndarray:
        best = self._similarity(X).argmax(1).cpu().numpy()  # checks fitted-ness first
        return self.classes_[best]
