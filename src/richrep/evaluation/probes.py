"""Linear probes on frozen features, as scikit-learn estimators.

:class:`LinearProbe` is L2-regularized multinomial logistic regression whose strength is chosen
on validation data, solved full-batch with torch (CPU or GPU) by
:mod:`richrep.evaluation.solver`:

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
  with many features (where that d^3 work would not pay, :func:`.solver.choose_preconditioner`)
  ``Sigma`` is approximated by its top eigenpairs plus diagonal blocks (:mod:`.lowrank`), so
  the cost grows with n d k, not d^3;
* features (and the solver's work) beyond ``runtime.memory`` are not copied into memory: every
  pass streams them from their source, e.g. the feature cache on disk (:mod:`.stream`);
* the C with the best validation accuracy is kept (ties go to the stronger regularization),
  then the model is refit on train + validation with that C, warm-started.

:class:`NearestMeanProbe` is a class-centroid classifier on standardized features.

``fit`` changes no process-wide setting (torch threads, matmul precision). The configuration the
probe's speed was measured with is an explicit policy the caller applies around the fit,
:func:`richrep.runtime.cpu_policy.probe_compute_policy`.
"""

from __future__ import annotations

import time
import warnings
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, PlainValidator
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from richrep.data.feature_rows import is_row_source
from richrep.errors import DataError
from richrep.evaluation.inputs import (
    as_features,
    as_labels,
    check_val_labels,
    class_indices,
    device_for,
    fit_inputs,
    standardize_stats,
    standardized_t,
    validation_rows,
)
from richrep.evaluation.solver import DTYPES, PathResult, solve_path
from richrep.evaluation.stream import block_rows, fit_streamed, plan_inputs
from richrep.plugins import PROBES
from richrep.registry import check_arguments
from richrep.runtime.cpu_policy import fast_matmul_active
from richrep.runtime.device import check_device
from richrep.runtime.memory import MemoryBudget

__all__ = ["DEFAULT_CS", "LinearProbe", "NearestMeanProbe", "make_probe", "probe_seed"]

DEFAULT_CS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


def _device_name(v: Any) -> Any:
    if isinstance(v, torch.device):
        return v
    if not isinstance(v, str):
        raise ValueError(f"a device name like 'auto', 'cpu' or 'cuda' is expected, got {v!r}")
    if v != "auto":
        check_device(v, available=False)  # availability is checked where the probe runs
    return v


# The constraints of the probes' arguments, checked when an experiment is read (the registry
# validates a spec's arguments from these annotations) and again by ``fit``.
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Device = Annotated[str, PlainValidator(_device_name)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class _TorchLabels(ClassifierMixin):
    """``score`` (mean accuracy) that also takes ``y`` as a torch tensor."""

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        return super().score(X, y, sample_weight)


@PROBES.register(
    "linear", description="L2 logistic regression, strength chosen on a validation split"
)
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
        of the whole fit, whether every solve converged, and whether float32 CPU matmuls ran in
        oneDNN's bf16 fpmath mode (``fast_matmul``: set by the caller's policy, never by fit);
        for features streamed beyond ``runtime.memory`` (:mod:`.stream`), ``stream``: passes,
        bytes read, seconds reading and waiting for blocks
    device_ : str
    n_features_in_, feature_names_in_ : as in scikit-learn
    """

    def __init__(
        self,
        Cs: PositiveFloat | Annotated[list[PositiveFloat], Field(min_length=1)] = DEFAULT_CS,
        val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
        max_iter: Annotated[int, Field(ge=1)] = 100,
        tol: PositiveFloat = 1e-4,
        refit: bool = True,
        random_state: Seed | None = 0,
        device: Device = "auto",
        dtype: Literal["float32", "float64"] = "float32",
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
        check_arguments(type(self), self.get_params(deep=False))  # the annotations' constraints
        Cs = np.atleast_1d(np.asarray(self.Cs, dtype=np.float64))
        return np.unique(Cs), DTYPES[self.dtype]

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> LinearProbe:
        """Fit the probe; C is chosen on (X_val, y_val) when given, otherwise on a stratified
        ``val_fraction`` of (X, y) (see :func:`.features.stratified_val_split`; if no class has
        two examples nothing can be held out, and the grid value closest to C = 1,
        scikit-learn's default, is used with a warning). The final model is refit on everything
        given (``refit=True``). Changes no process-wide torch setting; for the measured speed
        on CPU, call it inside :func:`richrep.runtime.cpu_policy.probe_compute_policy`."""
        Cs, dtype = self._check_params()
        t_start = time.perf_counter()
        budget = MemoryBudget.here().bytes
        X, X_val, stream = plan_inputs(X, X_val, y, budget)  # reads a source that fits
        if stream:  # features (and the work) beyond runtime.memory: read in blocks each pass
            device = device_for(self.device, X)
            *fitted, streamed = fit_streamed(self, X, y, X_val, y_val, Cs, dtype, device, budget)
            self._keep(*fitted, device, dtype, t_start)
            self.solver_stats_["stream"] = streamed  # passes, bytes read, seconds
            return self
        Xt, y = fit_inputs(self, X, y)
        classes, y_idx = class_indices(y)
        if (X_val is None) != (y_val is None):
            raise DataError("give both X_val and y_val, or neither")
        device = device_for(self.device, X)

        mean, scale, active = standardize_stats(Xt)

        parts, labels, n_train, Cs = self._training_rows(Xt, y_idx, classes, X_val, y_val, Cs)
        XT = standardized_t(parts, mean, scale, active, dtype, device)
        del parts

        k = classes.size
        args = (Cs, k, self.max_iter, self.tol, self.refit)
        path = solve_path(XT, labels, n_train, *args, precond="auto")
        return self._keep(classes, mean, scale, active, Cs, path, device, dtype, t_start)

    def _keep(
        self,
        classes: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        active: np.ndarray,
        Cs: np.ndarray,
        path: PathResult,
        device: torch.device,
        dtype: torch.dtype,
        t_start: float,
    ) -> LinearProbe:
        """Keep a solved path as the fitted attributes (back in the original feature space)."""
        Wt, n_iter, scores, C_best, converged, evals, flops = path
        if not converged:
            warnings.warn(
                f"LinearProbe: L-BFGS did not reach tol={self.tol:g} within max_iter="
                f"{self.max_iter} for every C (iterations: {n_iter}); increase max_iter",
                ConvergenceWarning,
                stacklevel=3,
            )
        k = classes.size
        self.classes_ = classes
        self.device_ = str(device)
        self.mean_, self.scale_ = mean, scale
        W = Wt[:-1].to(torch.float64).cpu().numpy()
        b = Wt[-1].to(torch.float64).cpu().numpy()
        coef = np.zeros((k, mean.size))
        coef[:, active] = (W / scale[active, None]).T
        self.coef_ = coef
        self.intercept_ = b - coef @ mean
        self.Cs_ = Cs
        self.scores_ = np.asarray(scores, dtype=np.float64)
        self.C_ = C_best
        self.n_iter_ = np.asarray(n_iter, dtype=np.int64)
        self.solver_stats_ = {
            # oneDNN's bf16 fpmath for float32 matmuls (see cpu_policy); read only here
            "fast_matmul": fast_matmul_active(device, dtype),
            "evals": evals,
            "flops": flops,
            "seconds": time.perf_counter() - t_start,
            "converged": converged,
        }
        return self

    def _training_rows(
        self,
        Xt: torch.Tensor,
        y_idx: np.ndarray,
        classes: np.ndarray,
        X_val: Any,
        y_val: Any,
        Cs: np.ndarray,
    ) -> tuple[list[tuple[torch.Tensor, np.ndarray | None]], np.ndarray, int, np.ndarray]:
        """The rows to solve on, those of the training part first, then those of the validation
        part (if any), their labels, the size of the training part, and the grid (one value
        when nothing can be held out)."""
        if X_val is not None:
            Xv = as_features(self, X_val, "X_val", reset=False)
            yv = as_labels(y_val, Xv.shape[0], "y_val")
            check_val_labels(yv, classes)
            labels = np.concatenate([y_idx, np.searchsorted(classes, yv)])
            return [(Xt, None), (Xv, None)], labels, Xt.shape[0], Cs
        tr, va, Cs = validation_rows(y_idx, Cs, float(self.val_fraction), self.random_state)
        rows = np.concatenate([tr, va])
        return [(Xt, rows)], y_idx[rows], tr.size, Cs

    # -- prediction ------------------------------------------------------------------------------

    def _scores(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        if is_row_source(X):  # features on disk: scored block by block
            rows = block_rows(X.shape[1], MemoryBudget.here().bytes)
            return torch.cat([self._scores(block) for _, block in X.blocks(rows)])
        Xt = as_features(self, X, "X", reset=False)
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


@PROBES.register("nearest_mean", description="nearest class mean on standardized features")
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

    def __init__(
        self, metric: Literal["cosine", "euclidean"] = "cosine", device: Device = "auto"
    ) -> None:
        self.metric = metric
        self.device = device

    def fit(self, X: Any, y: Any) -> NearestMeanProbe:
        check_arguments(type(self), self.get_params(deep=False))  # the annotations' constraints
        Xt, y = fit_inputs(self, X, y)
        classes, y_idx = class_indices(y)
        device = device_for(self.device, X)
        self.mean_, self.scale_, _ = standardize_stats(Xt)
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
        Xt = as_features(self, X, "X", reset=False)
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


def probe_seed(seed: int, draw: int) -> int:
    """The ``random_state`` (validation-split seed) of draw ``draw``'s probe in an experiment of
    ``seed``: ``seed + draw``, so every draw holds out its own validation split, another
    ``seed`` moves every draw's, and a single-draw probe (``all``, robustness) keeps the
    experiment's seed."""
    return seed + draw


def make_probe(name: str, params: dict[str, Any], *, seed: int, device: str) -> Any:
    """A fresh probe ``name`` with ``params``; ``seed`` and the run's ``device`` fill
    ``random_state`` and ``device`` where the probe takes them and ``params`` leaves them unset
    (:attr:`PROBES.filled`: a resolved spec never holds their defaults)."""
    entry = PROBES.entry(name)
    accepted = {p.name for p in entry.params()}
    run = {"random_state": seed, "device": device}
    extra = {k: run[k] for k in PROBES.filled if k in accepted}
    return PROBES.build(name, **{**extra, **params})
