"""Full-batch solver of L2-regularized multinomial logistic regression, on torch tensors.

It knows nothing of scikit-learn, of validation or of the caller's labels: it takes the
standardized features transposed, ``XT`` (d, n), class indices in ``range(k)`` and a grid of
``C``, and returns parameters ``[W; b]`` of shape (d + 1, k). The estimator around it is
:class:`richrep.evaluation.probes.LinearProbe`.

* objective: scikit-learn's, ``C * sum_i CE_i + ||W||^2 / 2`` with the intercept unpenalized,
  divided by ``C n`` (:class:`Multinomial`);
* method: L-BFGS (two-loop recursion, Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
  Alg. 7.4) with Armijo backtracking by quadratic interpolation (ibid. Sec. 3.5) and Hager &
  Zhang's approximate-Wolfe acceptance near the optimum (SIAM J. Optim. 16, 2005), the initial
  matrix ``H0 = gamma M^{-1}`` preconditioned by ``M = a * Sigma + lam * I`` (Sigma the feature
  covariance) instead of the usual ``gamma I`` (ibid. eq. 7.20);
* path: the grid is solved from the strongest regularization to the weakest, each value
  warm-started from the previous solution and its curvature pairs, corrected exactly for the
  new (quadratic) penalty (:func:`solve_path`).

Nothing here changes process-wide torch settings (threads, matmul precision): those are the
caller's policy (:mod:`richrep.runtime.cpu_policy`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from richrep.evaluation.lowrank import LowRankPreconditioner, Spectrum

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHUNK = 8192  # rows per block when streaming over the features
# Preconditioner: the CE Hessian is about ``a * Sigma`` (a = 1/k at uniform predictions, lower
# as they sharpen); what matters is the ratio lam / a: 0.1 to 0.3 measured alike on cat-K
# features (1.0 took ~35% more evaluations).
PRECOND_A = 0.2
GRAM_ROWS = 16384
FULL_MIN_D = 1024  # up to here always the full preconditioner (choose_preconditioner)
FULL_MAX_D = 4096  # above: always the block + low-rank one (docs/scale.md)
MEMORY = 20  # L-BFGS curvature pairs (10 took ~20% more evaluations on cat-K features)


class Multinomial:
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


class Preconditioner:
    """Applies ``M^{-1}`` with ``M = blockdiag(a * Sigma + lam * I, a)`` (the last row is the
    intercept, whose "feature" is the constant 1, of unit second moment like a standardized one).
    ``M^{-1}`` is formed once per C (a d x d Cholesky in float64): applying it is one small
    matmul per L-BFGS iteration. Cat-K features of K networks are strongly correlated; this
    removes most of that ill-conditioning."""

    def __init__(self, sigma: torch.Tensor, lam: float, dtype: torch.dtype) -> None:
        a = PRECOND_A
        d = sigma.shape[0]
        # a floor keeps M safely positive definite for huge C; it only shapes the preconditioner
        lam = max(lam, 1e-8 * a * float(sigma.diagonal().max()) if d else 1.0, 1e-12)
        M = a * sigma + lam * torch.eye(d, dtype=sigma.dtype, device=sigma.device)
        self.Minv = torch.cholesky_inverse(torch.linalg.cholesky(M)).to(dtype)
        self.inv_a = 1.0 / a

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(q)
        # (q^T M^-1)^T: MKL's float32 path for M^-1 @ q (d x d times d x k) is much slower
        r[:-1] = (q[:-1].t() @ self.Minv).t()
        torch.mul(q[-1], self.inv_a, out=r[-1])
        return r


class LBFGSMemory:
    """L-BFGS curvature pairs, stored stacked so that the two-loop recursion costs a handful of
    (m x p) matrix-vector products plus an m x m scalar recursion on the host, instead of ~6m
    tiny vector operations (which dominated the iteration time on a busy 2-core machine)."""

    def __init__(self, m: int | None = None) -> None:
        self.m = MEMORY if m is None else m
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

    def direction(self, g: torch.Tensor, precond: Preconditioner) -> torch.Tensor:
        """``-H g`` by the two-loop recursion (Nocedal & Wright Alg. 7.4) with
        ``H0 = gamma M^{-1}``."""
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


def minimize(
    obj: Multinomial,
    Wt: torch.Tensor,
    lam: float,
    precond: Preconditioner,
    memory: LBFGSMemory,
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


def covariance(XT: torch.Tensor) -> torch.Tensor:
    """``X^T X / n`` (float64) from at most ``GRAM_ROWS`` evenly spaced examples (columns of
    ``XT``), with the diagonal from all of them: a rare feature that a subsample misses must not
    look flat to the preconditioner (that made L-BFGS far slower on real CNN features)."""
    step = max(1, math.ceil(XT.shape[1] / GRAM_ROWS))
    S = XT[:, ::step]
    sigma = (S @ S.t()).to(torch.float64) / S.shape[1]
    if step > 1:
        diag = torch.zeros(XT.shape[0], dtype=torch.float64, device=XT.device)
        for i in range(0, XT.shape[1], CHUNK):
            block = XT[:, i : i + CHUNK]
            diag += (block * block).sum(1, dtype=torch.float64)
        sigma.diagonal().copy_(torch.maximum(diag / XT.shape[1], sigma.diagonal()))
    return sigma


@torch.no_grad()
def _accuracy(XT: torch.Tensor, y: torch.Tensor, Wt: torch.Tensor) -> float:
    """Fraction of the columns of ``XT`` whose highest logit is their class in ``y``."""
    pred = torch.addmm(Wt[-1][:, None], Wt[:-1].t(), XT).argmax(0)
    return float((pred == y).to(torch.float64).mean())


class PathResult(NamedTuple):
    """What :func:`solve_path` found."""

    Wt: torch.Tensor  # (d + 1, k): [W; b] of the chosen C (refit if asked), solver dtype
    n_iter: list[int]  # L-BFGS iterations for each C, then for the refit (0 if none)
    scores: list[float]  # validation accuracy for each C (NaN when nothing was held out)
    C: float  # the chosen value
    converged: bool  # whether every solve converged
    evals: int  # function evaluations
    flops: int  # matmul flops, 4 n d k per evaluation


def choose_preconditioner(d: int, n: int = 1, k: int = 2, budget: int | None = None) -> str:
    """``"full"`` (a d x d Cholesky per C) or ``"lowrank"`` (:mod:`.lowrank`) for ``n``
    training examples of ``d`` features and ``k`` classes. Full up to :data:`FULL_MIN_D`
    features; up to :data:`FULL_MAX_D` while its work -- the covariance, ``2 d^2 n_s``, and a
    float64 Cholesky and inverse per C, ``~2 d^3`` float32-equivalent -- stays below a quarter
    of the solves' (~15 evaluations of ``4 n d k`` per C, measured on cat-K features: at
    d = 4,096, n = 18,000, k = 100 the full one took 3x the time of d = 2,048) and its three
    d x d float64 matrices within a quarter of ``budget`` bytes; above, low-rank."""
    if budget is not None and 3 * 8 * d * d > budget // 4:
        return "lowrank"
    if d <= FULL_MIN_D:
        return "full"
    full_work = 18 * d * d + 2 * d * min(n, GRAM_ROWS)  # (9 x 2 d^3 + 2 d^2 n_s) / d
    if d <= FULL_MAX_D and full_work <= 135 * n * k:  # a quarter of 9 x 15 x 4 n d k, / d
        return "full"
    return "lowrank"


class InMemory:
    """The problem :func:`solve_grid` solves, on the standardized ``XT`` (d, n) in memory: the
    first ``n_train`` columns train, the rest (if any) validate."""

    def __init__(self, XT: torch.Tensor, labels: np.ndarray, n_train: int, k: int) -> None:
        self.XT, self.n_train, self.k = XT, n_train, k
        self.y = torch.as_tensor(labels, device=XT.device)
        self.has_val = n_train < XT.shape[1]
        self.d, self.dtype, self.device = XT.shape[0], XT.dtype, XT.device

    def objective(self, everything: bool) -> Multinomial:
        if everything:
            return Multinomial(self.XT, self.y, self.k)
        return Multinomial(self.XT[:, : self.n_train], self.y[: self.n_train], self.k)

    def val_accuracy(self, Wt: torch.Tensor) -> float:
        return _accuracy(self.XT[:, self.n_train :], self.y[self.n_train :], Wt)

    def statistics(self, kind: str) -> torch.Tensor | Spectrum:
        XT = self.XT[:, : self.n_train]
        if kind == "full":
            return covariance(XT)
        step = max(1, math.ceil(XT.shape[1] / GRAM_ROWS))
        diag = torch.zeros(XT.shape[0], dtype=torch.float64, device=XT.device)
        for i in range(0, XT.shape[1], CHUNK):
            block = XT[:, i : i + CHUNK]
            diag += (block * block).sum(1, dtype=torch.float64)
        return Spectrum(XT[:, ::step].t(), diag / XT.shape[1])


def preconditioner(
    stats: torch.Tensor | Spectrum, lam: float, dtype: torch.dtype
) -> Preconditioner | LowRankPreconditioner:
    """``M^{-1}`` for ``lam`` from what :meth:`InMemory.statistics` gave (a covariance: the full
    one; a :class:`Spectrum`: the low-rank + diagonal one)."""
    if isinstance(stats, Spectrum):
        return LowRankPreconditioner(stats, lam, PRECOND_A, dtype)
    return Preconditioner(stats, lam, dtype)


def solve_path(
    XT: torch.Tensor,
    labels: np.ndarray,
    n_train: int,
    Cs: np.ndarray,
    k: int,
    max_iter: int,
    tol: float,
    refit: bool,
    precond: str = "full",
) -> PathResult:
    """Solve the grid ``Cs`` (increasing: strong to weak regularization) with warm starts on the
    training part (the first ``n_train`` columns of the standardized ``XT``, labels in
    ``range(k)``), choose C by accuracy on the rest (the validation part, if any; ties go to the
    stronger regularization), then refit on both with that C, warm-started. ``precond``:
    ``"full"``, ``"lowrank"`` or ``"auto"`` (:func:`choose_preconditioner`)."""
    if precond == "auto":
        precond = choose_preconditioner(XT.shape[0], n_train, k)
    return solve_grid(InMemory(XT, labels, n_train, k), Cs, max_iter, tol, refit, precond)


def solve_grid(
    problem: Any, Cs: np.ndarray, max_iter: int, tol: float, refit: bool, precond: str
) -> PathResult:
    """:func:`solve_path` on a problem (:class:`InMemory`, or one streamed from disk: the same
    ``d``, ``k``, ``dtype``, ``has_val``, ``objective``, ``val_accuracy`` and ``statistics``)."""
    k, dtype = problem.k, problem.dtype
    obj = problem.objective(False)
    stats = problem.statistics(precond)
    Wt = torch.zeros(problem.d + 1, k, dtype=dtype, device=problem.device)
    memory = LBFGSMemory()
    n_iter, scores, solutions, converged = [], [], [], True
    lam_prev = None
    for C in Cs:
        lam = 1.0 / (C * obj.n)
        if lam_prev is not None:
            memory.shift_penalty(lam - lam_prev, obj.d * k)  # keep the pairs, corrected
        lam_prev = lam
        Wt, it, ok = minimize(
            obj, Wt, lam, preconditioner(stats, lam, dtype), memory, max_iter, tol
        )
        n_iter.append(it)
        converged &= ok
        solutions.append(Wt)
        scores.append(problem.val_accuracy(Wt) if problem.has_val else math.nan)
    best = int(np.argmax(scores)) if problem.has_val else 0  # the first maximum: the strongest
    Wt, C_best = solutions[best], float(Cs[best])
    evals, flops = obj.evals, obj.flops
    del obj, solutions

    refit_iter = 0
    if problem.has_val and refit:
        obj = problem.objective(True)
        lam = 1.0 / (C_best * obj.n)
        # at least one step: the warm start solves a different (larger) problem
        precond_ = preconditioner(stats, lam, dtype)
        Wt, refit_iter, ok = minimize(obj, Wt, lam, precond_, LBFGSMemory(), max_iter, tol, 1)
        converged &= ok
        evals, flops = evals + obj.evals, flops + obj.flops
    return PathResult(Wt, n_iter + [refit_iter], scores, C_best, converged, evals, flops)
