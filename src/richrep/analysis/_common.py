"""Shared plumbing: input validation and float64 accumulation of row sums over chunks.

Every measure sees its inputs through :func:`feature_matrix` / :func:`check_pair` (numpy arrays
or torch tensors, on any device; a 1-d array is one unit) and computes on the device of ``X``.
Sums over the rows (the samples) are accumulated in float64 chunk by chunk: the d×d products
of one chunk (at most ``CHUNK_ELEMENTS`` values per matrix) run in the inputs' precision —
float32 for float32/float16/bfloat16 inputs, float64 for float64 inputs — and are added in
float64. Data are shifted (centered) before the products, so large means cost no precision.
(On GPUs, TF32 matmuls — ``torch.backends.cuda.matmul.allow_tf32`` — would lower the precision
of the chunk products; leave it off for these measures.)
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch

from richrep.errors import DataError

Array: TypeAlias = np.ndarray | torch.Tensor
"""A (samples × units) feature matrix: a numpy array or a torch tensor (any device)."""

CHUNK_ELEMENTS = 2**24  # values per matrix in one chunk product (64 MB in float32)
MIN_CHUNK_ROWS = 1024


def chunk_rows(*widths: int) -> int:
    """Rows per chunk for matrices of these widths (large chunks keep matmuls efficient)."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(widths))


def feature_matrix(a: Array, name: str = "X") -> torch.Tensor:
    """``a`` as a finite floating 2-d tensor (rows = samples); raise :class:`DataError` if not."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(a))
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{name} is not a numeric array: {e}") from None
    if t.is_complex():
        raise DataError(f"{name} is complex ({t.dtype}); features must be real")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2:
        raise DataError(
            f"{name} must be a 2-d (samples × units) matrix; got shape {tuple(t.shape)}"
        )
    if t.shape[1] == 0:
        raise DataError(f"{name} has no columns (units); shape {tuple(t.shape)}")
    if t.numel() and _all_finite(t):
        return t
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"{name} has {int(bad.sum())} non-finite values (NaN or inf), "
            f"the first at row {r}, column {c}"
        )
    return t


def _all_finite(t: torch.Tensor) -> bool:
    """Cheap test: min and max are finite iff there is no NaN or ±inf (NaN propagates)."""
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_pair(
    X: Array, Y: Array, min_rows: int = 2, what: str = "this measure"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two feature matrices on the same samples; return them on ``X``'s device."""
    x, y = feature_matrix(X, "X"), feature_matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"X has {x.shape[0]} rows but Y has {y.shape[0]}; "
            "rows must be the same samples in the same order"
        )
    if x.shape[0] < min_rows:
        raise DataError(f"{what} needs at least {min_rows} rows (samples); got {x.shape[0]}")
    return x, y.to(x.device)


def compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (the precision of the chunk products)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def dead_tolerance(dtype: torch.dtype) -> float:
    """Relative std (std / |mean|) below which a unit counts as constant ("dead")."""
    return 16 * torch.finfo(dtype).eps


class Moments:
    """Float64 sums over rows of shifted features ``x - shift_x`` (and ``y - shift_y``).

    Holds ``n``, the sums ``sx``, ``sy``, the products ``sxx``, ``syy``, ``sxy`` (``sxx`` and
    ``syy`` only their diagonals when ``full_self`` is false) and, when ``rows`` is true, the
    row-norm sums the unbiased HSIC estimator needs (with ``a_i = |x_i|²``, ``b_i = |y_i|²``):
    ``sa, sb, saa, sbb, sab`` and the vectors ``xa = Σ x_i a_i``, ``xb``, ``ya``, ``yb``.
    The shift is the first batch's mean unless given (the column means are best).
    """

    def __init__(self, rows: bool = False, full_self: bool = True) -> None:
        self.rows, self.full_self = rows, full_self
        self.n = 0
        self.shift_x: torch.Tensor | None = None
        self.shift_y: torch.Tensor | None = None
        self.dtype_x: torch.dtype = torch.float32
        self.dtype_y: torch.dtype = torch.float32

    def set_shift(self, shift_x: torch.Tensor, shift_y: torch.Tensor | None) -> None:
        self.shift_x = shift_x.to(torch.float64)
        self.shift_y = None if shift_y is None else shift_y.to(torch.float64)

    def _init(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if self.shift_x is None:
            self.set_shift(column_mean(x), None if y is None else column_mean(y))
        assert self.shift_x is not None
        dev, f64 = x.device, torch.float64
        d1, d2 = x.shape[1], (0 if y is None else y.shape[1])
        self.dtype_x, self.dtype_y = x.dtype, (x.dtype if y is None else y.dtype)

        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=f64, device=dev)

        self.sx, self.sy = z(d1), z(d2)
        self.sxx = z(d1, d1) if self.full_self else z(d1)
        self.syy = z(d2, d2) if self.full_self else z(d2)
        self.sxy = z(d1, d2)
        self.sa = self.sb = self.saa = self.sbb = self.sab = 0.0
        self.xa, self.xb, self.ya, self.yb = z(d1), z(d1), z(d2), z(d2)

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if self.n == 0:
            self._init(x, y)
        assert self.shift_x is not None
        cd = compute_dtype(x) if y is None else compute_dtype(x, y)
        f64 = torch.float64
        shift_x = self.shift_x.to(cd)
        shift_y = None if self.shift_y is None else self.shift_y.to(cd)
        step = chunk_rows(x.shape[1], 0 if y is None else y.shape[1])
        for lo in range(0, x.shape[0], step):
            xc = x[lo : lo + step].to(cd) - shift_x
            yc = None
            if y is not None:
                assert shift_y is not None
                yc = y[lo : lo + step].to(cd) - shift_y
            self.n += xc.shape[0]
            self.sx += xc.sum(0).to(f64)
            self._self_products(xc, yc)
            if yc is not None:
                self.sy += yc.sum(0).to(f64)
                self.sxy += (xc.T @ yc).to(f64)
            if self.rows:
                self._row_terms(xc, yc)

    def _self_products(self, xc: torch.Tensor, yc: torch.Tensor | None) -> None:
        f64 = torch.float64
        if self.full_self:
            self.sxx += (xc.T @ xc).to(f64)
            if yc is not None:
                self.syy += (yc.T @ yc).to(f64)
        else:
            self.sxx += xc.square().sum(0).to(f64)
            if yc is not None:
                self.syy += yc.square().sum(0).to(f64)

    def _row_terms(self, xc: torch.Tensor, yc: torch.Tensor | None) -> None:
        f64 = torch.float64
        yc = xc if yc is None else yc
        a = torch.linalg.vector_norm(xc, dim=1).square()  # compute precision
        b = torch.linalg.vector_norm(yc, dim=1).square()
        a64, b64 = a.to(f64), b.to(f64)
        self.sa += float(a64.sum())
        self.sb += float(b64.sum())
        self.saa += float(a64 @ a64)
        self.sbb += float(b64 @ b64)
        self.sab += float(a64 @ b64)
        self.xa += (xc.T @ a).to(f64)
        self.xb += (xc.T @ b).to(f64)
        self.ya += (yc.T @ a).to(f64)
        self.yb += (yc.T @ b).to(f64)

    # centered second moments (sums, not divided by n)
    def cxx(self) -> torch.Tensor:
        if self.full_self:
            return self.sxx - torch.outer(self.sx, self.sx) / self.n
        return self.sxx - self.sx.square() / self.n

    def cyy(self) -> torch.Tensor:
        if self.full_self:
            return self.syy - torch.outer(self.sy, self.sy) / self.n
        return self.syy - self.sy.square() / self.n

    def cxy(self) -> torch.Tensor:
        return self.sxy - torch.outer(self.sx, self.sy) / self.n

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.shift_x is not None and self.shift_y is not None
        return self.shift_x + self.sx / self.n, self.shift_y + self.sy / self.n

    def dead(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of the constant units of x and y (see :func:`dead_mask`)."""
        cxx, cyy = self.cxx(), self.cyy()
        if self.full_self:
            cxx, cyy = torch.diagonal(cxx), torch.diagonal(cyy)
        mx, my = self.means()
        return (
            dead_mask(cxx / self.n, mx, self.dtype_x),
            dead_mask(cyy / self.n, my, self.dtype_y),
        )

    def clean(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centered ``cxx, cyy, cxy`` (full) with the rows and columns of dead units zeroed, so
        that rounding noise in a constant unit cannot pass for signal."""
        cxx, cyy, cxy = self.cxx(), self.cyy(), self.cxy()
        dx, dy = self.dead()
        if bool(dx.any()) or bool(dy.any()):
            cxx, cyy, cxy = cxx.clone(), cyy.clone(), cxy.clone()
            cxx[dx, :], cxx[:, dx], cyy[dy, :], cyy[:, dy] = 0.0, 0.0, 0.0, 0.0
            cxy[dx, :], cxy[:, dy] = 0.0, 0.0
        return cxx, cyy, cxy


def column_mean(x: torch.Tensor) -> torch.Tensor:
    """Column means in float64, summed in the compute precision (a shift, not a result)."""
    return x.mean(0, dtype=compute_dtype(x)).to(torch.float64)


def centered_moments(
    x: torch.Tensor, y: torch.Tensor | None = None, rows: bool = False, full_self: bool = True
) -> Moments:
    """Moments of ``x`` (and ``y``) shifted by their column means (a two-pass algorithm)."""
    m = Moments(rows=rows, full_self=full_self)
    m.set_shift(column_mean(x), None if y is None else column_mean(y))
    m.update(x, y)
    return m


def dead_mask(var: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Units whose std is zero or below the input precision relative to their mean."""
    tol = dead_tolerance(dtype)
    return var <= (tol * mean.abs()).square()
