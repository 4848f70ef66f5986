"""Numeric plumbing of the probes: feature and label validation, standardization, devices and
the validation split. The one copy; the estimators in :mod:`richrep.evaluation.probes` call it.

A torch tensor stays a tensor on its own device; anything else goes through scikit-learn's
``validate_data`` so that feature names, ``n_features_in_`` and error messages follow
scikit-learn. NaN and inf raise :class:`~richrep.errors.DataError` either way.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from richrep.data.feature_rows import is_row_source
from richrep.errors import DataError
from richrep.evaluation.solver import CHUNK
from richrep.runtime.device import resolve_device


def device_for(device: str | torch.device, X: Any) -> torch.device:
    """The torch device for ``device``: ``"auto"`` is the tensor ``X``'s own device, else CUDA
    when available, else CPU; anything else must name a torch device (:class:`ConfigError`)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto" and isinstance(X, torch.Tensor):
        return X.device
    return resolve_device(device)


def check_finite(X: torch.Tensor, name: str, start: int | None = None) -> None:
    """Raise :class:`DataError` naming the count and the first position of NaN/inf in ``X``;
    for a block of rows from ``start`` of a streamed matrix, the first position only."""
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        count = f"{int(bad.sum())} " if start is None else ""
        raise DataError(
            f"{name} contains {count}NaN or inf value(s) (first at row {(start or 0) + row}, "
            f"column {col}); probes need finite features"
        )


def as_features(est: BaseEstimator, X: Any, name: str, *, reset: bool) -> torch.Tensor:
    """Validate features as a 2-D real tensor of at least float32 (a tensor keeps its device; an
    array becomes a CPU tensor); ``reset`` sets ``est.n_features_in_``, otherwise it is
    checked. A row source (features on disk) is read whole."""
    if is_row_source(X):
        X = X.to_tensor()
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
        check_finite(X, name)
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
    check_finite(Xt, name)
    return Xt


def as_labels(y: Any, n: int, name: str) -> np.ndarray:
    """Validate classification targets for ``n`` examples as a 1-D numpy array (a tensor is
    copied to the host; a column vector is raveled with scikit-learn's warning)."""
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


def fit_inputs(est: BaseEstimator, X: Any, y: Any) -> tuple[torch.Tensor, np.ndarray]:
    """``(features, labels)`` of a ``fit`` call, validated (and ``n_features_in_`` set)."""
    if is_row_source(X):
        X = X.to_tensor()
    if not isinstance(X, torch.Tensor) and y is None:
        # let scikit-learn phrase the "y is required" error
        validate_data(est, X, y, dtype=[np.float64, np.float32], ensure_all_finite=False)
    Xt = as_features(est, X, "X", reset=True)
    y = as_labels(y, Xt.shape[0], "y")
    return Xt, y


def class_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, y as indices into classes)``; at least two classes (:class:`DataError`)."""
    classes, y_idx = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise DataError(
            f"y has only one class ({classes[0]!r}); a classifier needs examples of at "
            f"least 2 classes"
        )
    return classes, y_idx


def check_val_labels(y_val: np.ndarray, classes: np.ndarray) -> None:
    """:class:`DataError` when ``y_val`` holds a label that is not one of ``classes``."""
    unknown = np.setdiff1d(np.unique(y_val), classes)
    if unknown.size:
        raise DataError(
            f"y_val holds labels absent from y: {unknown[:5].tolist()}; a probe cannot "
            f"predict classes it was not trained on"
        )


def validation_rows(
    y_idx: np.ndarray, Cs: np.ndarray, val_fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train rows, validation rows, Cs)`` of a fit without given validation data: a
    stratified split (:func:`stratified_val_split`) when there is a grid to choose from. If no
    class has two examples nothing can be held out: the grid value closest to C = 1
    (scikit-learn's default) is used, with a warning."""
    tr = np.arange(y_idx.size)
    va = tr[:0]
    if Cs.size > 1:
        tr, va = stratified_val_split(y_idx, val_fraction, seed)
        if va.size == 0:
            warnings.warn(
                "no class has two examples, so no validation data can be held out to "
                "choose C; using the grid value closest to C=1 (scikit-learn's default)",
                UserWarning,
                stacklevel=3,
            )
            Cs = Cs[[int(np.argmin(np.abs(np.log(Cs))))]]
    return tr, va, Cs


def standardize_stats(X: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale and the mask of non-constant columns of X, in one pass over row blocks:
    shifted by the first row (so that E[x^2] - E[x]^2 does not cancel), summed in float64
    without a float64 copy of X. A column is constant if all its values are equal, or if its
    variance is at the level of round-off (scikit-learn's StandardScaler rule); its scale is 1."""
    n = X.shape[0]
    x0 = X[0].clone()
    s1 = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    s2 = torch.zeros_like(s1)
    varies = torch.zeros(X.shape[1], dtype=torch.bool, device=X.device)
    for i in range(0, n, CHUNK):
        c = X[i : i + CHUNK] - x0
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


def standardized_t(
    parts: list[tuple[torch.Tensor, np.ndarray | None]],
    mean: np.ndarray,
    scale: np.ndarray,
    active: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``((X[rows][:, active] - mean) / scale)^T`` of the parts ``(X, rows or None for all)``
    stacked row-wise, as one contiguous (d_active, n) matrix of ``dtype`` on ``device``, built
    block by block (the layout :class:`richrep.evaluation.solver.Multinomial` takes)."""
    cols = torch.as_tensor(np.flatnonzero(active), device=device)
    m = torch.as_tensor(mean[active], device=device, dtype=dtype)
    s = torch.as_tensor(scale[active], device=device, dtype=dtype)
    sizes = [A.shape[0] if rows is None else rows.size for A, rows in parts]
    out = torch.empty(cols.numel(), sum(sizes), dtype=dtype, device=device)
    at = 0
    for (A, rows), size in zip(parts, sizes, strict=True):
        for i in range(0, size, CHUNK):
            j = min(size, i + CHUNK)
            block = A[i:j] if rows is None else A[torch.as_tensor(rows[i:j], device=A.device)]
            block = block.to(device).index_select(1, cols).to(dtype)
            out[:, at + i : at + j] = ((block - m) / s).t()
        at += size
    return out


def stratified_val_split(
    y_idx: np.ndarray, val_fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices: ``round(val_fraction * n_c)`` examples of class c
    held out, at least one for every class with 2 or more examples and never its last one (a
    class with a single example stays whole in the training part).

    Not :func:`richrep.data.splits.stratified_split`, on purpose; the semantics differ:

    * a single-example class: that function holds it out when ``fraction > 0.5`` (it rounds
      ``fraction * 1`` up), which would leave the probe a class it never trains on;
    * seeds: it needs an int (it salts a ``SeedSequence``), while a scikit-learn
      ``random_state`` may be None (fresh randomness);
    * the draw: it shuffles with a salted ``np.random.Generator``, this with
      ``np.random.RandomState(seed)``; switching would change every probe's validation split,
      hence its chosen C and accuracy, against results already stored for the same seed.
    """
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(y_idx):
        idx = np.flatnonzero(y_idx == c)
        idx = idx[rng.permutation(idx.size)]
        n_val = min(idx.size - 1, max(1, int(round(val_fraction * idx.size))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
