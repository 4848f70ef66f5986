"""Centered kernel alignment (CKA; Kornblith, Norouzi, Lee & Hinton, ICML 2019).

``linear_cka`` and ``debiased_cka`` work in feature space: O(n·d²) time, O(d²) memory, no n×n
matrix, float64 sums (see :mod:`richrep.analysis._common`). ``cka_gram`` is the Gram-matrix
form (reference and RBF kernels). ``StreamingCKA`` accumulates the same sums over batches.

Conventions: CKA is a similarity in [0, 1] (1 = same up to rotation, isotropic scaling and
translation). Dead units (constant, up to rounding: see ``dead_units``) contribute nothing; when
all of X or of Y is constant, CKA is undefined and 0.0 is returned (never NaN).
Debiased CKA can be slightly negative (below chance) or above 1 for small n; it is reported as
is, never clipped, so that averages stay unbiased; it is 0.0 when a self-similarity estimate is
not positive (constant input, or a degenerate tiny sample).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field

from richrep.analysis._common import (
    Array,
    Moments,
    centered_moments,
    check_pair,
    chunk_rows,
    feature_matrix,
)
from richrep.analysis.measures import register_measure
from richrep.errors import ConfigError, DataError

PositiveFloat = Annotated[float, Field(gt=0)]


# --- feature space ---------------------------------------------------------------------------


def _biased_cka(m: Moments) -> float:
    cxx, cyy, cxy = m.clean()
    den = float(torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy))
    if den <= 0.0:
        return 0.0
    return float(cxy.square().sum()) / den


def _u_hsic(
    n: int, fro2: float, sab: float, quad: float, lin: float, ok: float, ol: float
) -> float:
    """Unbiased HSIC (Song et al. 2012, eq. 5) for linear kernels from feature-space sums.

    With K = XXᵀ, L = YYᵀ (diagonals zeroed: K̃, L̃), a_i = |x_i|², b_i = |y_i|², s = Σ x_i:
    tr(K̃L̃) = ||XᵀY||² − Σ a_i b_i,  1ᵀK̃1 = |s_x|² − Σ a_i  (``ok``; ``ol`` for L),
    1ᵀK̃L̃1 = s_xᵀ(XᵀY)s_y − s_x·Σ x_i b_i − s_y·Σ y_i a_i + Σ a_i b_i  (``quad - lin + sab``).
    """
    tr = fro2 - sab
    okl = quad - lin + sab
    return (tr + ok * ol / ((n - 1) * (n - 2)) - 2.0 * okl / (n - 2)) / (n * (n - 3))


def _debiased_cka(m: Moments) -> float:
    dx, dy = m.dead()
    if bool(dx.all()) or bool(dy.all()):
        return 0.0  # a constant input (its rounding noise must not give a value)
    n = m.n
    sx, sy = m.sx, m.sy
    ox, oy = float(sx @ sx) - m.sa, float(sy @ sy) - m.sb
    hxy = _u_hsic(
        n,
        float(m.sxy.square().sum()),
        m.sab,
        float(sx @ m.sxy @ sy),
        float(sx @ m.xb + sy @ m.ya),
        ox,
        oy,
    )
    hxx = _u_hsic(
        n, float(m.sxx.square().sum()), m.saa, float(sx @ m.sxx @ sx), float(2 * sx @ m.xa), ox, ox
    )
    hyy = _u_hsic(
        n, float(m.syy.square().sum()), m.sbb, float(sy @ m.syy @ sy), float(2 * sy @ m.yb), oy, oy
    )
    if not (hxx > 0.0 and hyy > 0.0):
        return 0.0
    return hxy / math.sqrt(hxx * hyy)


@register_measure("linear_cka", similarity=True)
def linear_cka(X: Array, Y: Array) -> float:
    """Linear CKA, ||YcᵀXc||²_F / (||XcᵀXc||_F ||YcᵀYc||_F) (Kornblith et al., ICML 2019).

    Computed in feature space (O(n·d²), float64 sums); 1 for X vs X, invariant to orthogonal
    maps, isotropic scaling and translation of either input; 0.0 when either is constant.
    """
    x, y = check_pair(X, Y, 2, "linear_cka")
    return _biased_cka(centered_moments(x, y))


@register_measure("debiased_cka", similarity=True)
def debiased_cka(X: Array, Y: Array) -> float:
    """Debiased linear CKA: CKA with the unbiased HSIC estimator (Song et al., JMLR 2012).

    As used by Nguyen, Raghu & Kornblith (ICLR 2021); computed in feature space from d×d
    products, row norms and sums. Needs n ≥ 4. Can be slightly negative (reported as is).
    """
    x, y = check_pair(X, Y, 4, "debiased_cka")
    return _debiased_cka(centered_moments(x, y, rows=True))


class StreamingCKA:
    """Linear CKA (or debiased, ``debiased=True``) accumulated over batches of samples.

    ``update(x_batch, y_batch)`` adds rows (same samples in both); ``value()`` equals
    :func:`linear_cka` (or :func:`debiased_cka`) on all rows seen. Sums are float64, taken
    around the first batch's mean. Small batches are buffered up to one chunk (about 2²⁴
    values per matrix, or ``buffer_rows`` rows when given; 0 = no buffering) so that the
    products stay efficient; memory is O(d² + chunk) whatever the number of rows.
    """

    def __init__(self, debiased: bool = False, buffer_rows: int | None = None) -> None:
        if buffer_rows is not None and buffer_rows < 0:
            raise ConfigError(f"StreamingCKA: buffer_rows must be >= 0; got {buffer_rows}")
        self.debiased = debiased
        self.buffer_rows = buffer_rows
        self._m = Moments(rows=debiased)
        self._shape: tuple[int, int] | None = None
        self._device: torch.device | None = None
        self._batches = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_rows = 0

    @property
    def n(self) -> int:
        """Number of rows (samples) seen."""
        return self._m.n + self._pending_rows

    def update(self, x_batch: Array, y_batch: Array) -> StreamingCKA:
        x, y = check_pair(x_batch, y_batch, 1, "StreamingCKA.update")
        if self._shape is None:
            self._shape, self._device = (x.shape[1], y.shape[1]), x.device
        elif (x.shape[1], y.shape[1]) != self._shape:
            raise DataError(
                f"StreamingCKA batch {self._batches}: X and Y have {x.shape[1]} and {y.shape[1]}"
                f" columns but earlier batches had {self._shape[0]} and {self._shape[1]}"
            )
        assert self._device is not None
        self._pending.append((x.to(self._device), y.to(self._device)))
        self._pending_rows += x.shape[0]
        self._batches += 1
        limit = chunk_rows(*self._shape) if self.buffer_rows is None else self.buffer_rows
        if self._pending_rows >= limit:
            self._flush()
        return self

    def _flush(self) -> None:
        if not self._pending:
            return
        if len(self._pending) == 1:
            x, y = self._pending[0]
        else:
            dx = torch.promote_types(*(p[0].dtype for p in self._pending[:2]))
            dy = torch.promote_types(*(p[1].dtype for p in self._pending[:2]))
            for px, py in self._pending[2:]:
                dx, dy = torch.promote_types(dx, px.dtype), torch.promote_types(dy, py.dtype)
            x = torch.cat([p[0].to(dx) for p in self._pending])
            y = torch.cat([p[1].to(dy) for p in self._pending])
        self._pending, self._pending_rows = [], 0
        self._m.update(x, y)

    def value(self) -> float:
        need = 4 if self.debiased else 2
        if self.n < need:
            raise DataError(f"StreamingCKA needs at least {need} rows (samples); got {self.n}")
        self._flush()
        return _debiased_cka(self._m) if self.debiased else _biased_cka(self._m)


# --- Gram matrices ---------------------------------------------------------------------------


def gram_linear(X: Array) -> torch.Tensor:
    """The n×n linear kernel XXᵀ in float64 (reference form; O(n²) memory)."""
    x = feature_matrix(X, "X").to(torch.float64)
    return x @ x.T


RBFMedian = Literal["reference", "distinct_pairs"]
"""Which squared distances the RBF bandwidth's median is taken over (see :func:`gram_rbf`)."""


def _median(v: torch.Tensor) -> float:
    """numpy's median of a 1-d tensor (the mean of the two middle values when even)."""
    m = v.numel()
    hi = float(torch.kthvalue(v, m // 2 + 1).values)
    return hi if m % 2 else 0.5 * (hi + float(torch.kthvalue(v, m // 2).values))


def _sq_median(sq: torch.Tensor, median: str) -> float:
    """The median squared distance of the bandwidth; if it is 0 (mostly duplicate rows), the
    median of the nonzero squared distances; 0.0 when all rows are equal."""
    n = sq.shape[0]
    if median == "reference":  # all n² entries, diagonal zeros included; numpy's median
        flat = sq.flatten()
        med = _median(flat)
        if med <= 0.0:
            pos = flat[flat > 0]
            med = _median(pos) if pos.numel() else 0.0
        return med
    pairs = sq[torch.ones(n, n, dtype=torch.bool, device=sq.device).triu_(1)]
    med = float(pairs.median()) if pairs.numel() else 0.0  # torch: the lower middle value
    if med <= 0.0:
        pos = pairs[pairs > 0]
        med = float(pos.median()) if pos.numel() else 0.0
    return med


def gram_rbf(X: Array, sigma_frac: float = 1.0, median: RBFMedian = "reference") -> torch.Tensor:
    """The RBF kernel exp(−|x_i − x_j|² / 2σ²) with σ = ``sigma_frac`` × √(median |x_i − x_j|²).

    ``sigma_frac`` is the ``threshold`` of Kornblith et al. (2019)'s reference code: the kernel
    width as a fraction of the median distance between examples (smaller: a more local kernel).
    The default 1.0 is their ``gram_rbf``'s default; their demo notebook uses 0.5.
    ``median="reference"`` takes numpy's median over the full n×n matrix of squared distances,
    its n zero diagonal entries included, as their ``gram_rbf`` does, so published RBF-CKA
    values are reproduced. ``"distinct_pairs"`` (richrep's former convention) takes torch's
    median (the lower middle value) over the pairs i < j only, which gives a slightly larger σ.
    If the median is 0 (mostly duplicate rows; the reference would divide by 0) the median of
    the nonzero squared distances is used; if all rows are equal the kernel is all ones (CKA 0).
    """
    if not sigma_frac > 0:
        raise ConfigError(f"rbf kernel: sigma_frac must be > 0; got {sigma_frac}")
    if median not in ("reference", "distinct_pairs"):
        raise ConfigError(
            f"rbf kernel: median must be 'reference' or 'distinct_pairs'; got {median!r}"
        )
    x = feature_matrix(X, "X").to(torch.float64)
    x = x - x.mean(0)
    sq_norm = x.square().sum(1)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * (x @ x.T)).clamp_(min=0.0)
    sq.fill_diagonal_(0.0)
    med = _sq_median(sq, median)
    if med <= 0.0:
        return torch.ones_like(sq)
    return sq.mul_(-1.0 / (2.0 * sigma_frac**2 * med)).exp_()


def _check_grams(K: Array, L: Array, min_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    k, lg = check_pair(K, L, min_rows, "CKA from Gram matrices")
    n = k.shape[0]
    for name, g in (("K", k), ("L", lg)):
        if g.shape != (n, n):
            raise DataError(f"Gram matrix {name} must be square n×n; got {tuple(g.shape)}")
    return k.to(torch.float64), lg.to(torch.float64)


def _center(g: torch.Tensor) -> torch.Tensor:
    return g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()


def _hsic_unbiased(k: torch.Tensor, lg: torch.Tensor) -> float:
    n = k.shape[0]
    kt, lt = k.clone(), lg.clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    tr = float((kt * lt).sum())  # tr(K̃L̃), both symmetric
    ones_k, ones_l = kt.sum(0), lt.sum(0)
    term2 = float(ones_k.sum()) * float(ones_l.sum()) / ((n - 1) * (n - 2))
    term3 = 2.0 * float(ones_k @ ones_l) / (n - 2)
    return (tr + term2 - term3) / (n * (n - 3))


def hsic_gram(K: Array, L: Array, debiased: bool = False) -> float:
    """HSIC from n×n Gram matrices: tr(KHLH)/(n−1)² (Gretton et al. 2005), or the unbiased
    estimator of Song et al. (JMLR 2012) when ``debiased`` (n ≥ 4)."""
    k, lg = _check_grams(K, L, 4 if debiased else 2)
    if debiased:
        return _hsic_unbiased(k, lg)
    n = k.shape[0]
    return float((_center(k) * _center(lg)).sum()) / (n - 1) ** 2


def cka_gram(K: Array, L: Array, debiased: bool = False) -> float:
    """CKA from n×n Gram matrices (Kornblith et al. 2019): HSIC(K,L)/√(HSIC(K,K)·HSIC(L,L)).

    The reference form of :func:`linear_cka` / :func:`debiased_cka` (with :func:`gram_linear`)
    and the engine of :func:`rbf_cka`. O(n²) memory. Undefined cases give 0.0.
    """
    k, lg = _check_grams(K, L, 4 if debiased else 2)
    if debiased:
        hxy, hxx, hyy = _hsic_unbiased(k, lg), _hsic_unbiased(k, k), _hsic_unbiased(lg, lg)
    else:
        kc, lc = _center(k), _center(lg)
        hxy, hxx, hyy = (float((a * b).sum()) for a, b in ((kc, lc), (kc, kc), (lc, lc)))
    if not (hxx > 0.0 and hyy > 0.0):
        return 0.0
    return hxy / math.sqrt(hxx * hyy)


def linear_cka_gram(X: Array, Y: Array, debiased: bool = False) -> float:
    """Linear (or debiased linear) CKA through n×n Gram matrices — a reference for testing."""
    x, y = check_pair(X, Y, 4 if debiased else 2, "linear_cka_gram")
    return cka_gram(gram_linear(x), gram_linear(y), debiased)


@register_measure("rbf_cka", similarity=True)
def rbf_cka(
    X: Array,
    Y: Array,
    sigma_frac: PositiveFloat = 1.0,
    debiased: bool = False,
    max_samples: Annotated[int, Field(ge=4)] = 4000,
    seed: int = 0,
    median: RBFMedian = "reference",
) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019), σ = ``sigma_frac`` × √(median squared distance).

    ``sigma_frac`` is the reference code's ``threshold``, σ as a fraction of the median
    distance (default 1.0, the reference's default; their demo uses 0.5); ``median`` picks the
    convention of the median (default: the reference's, over all n² entries; see
    :func:`gram_rbf`), so ``rbf_cka(X, Y)`` equals their ``cka(gram_rbf(X), gram_rbf(Y))`` and
    ``rbf_cka(X, Y, sigma_frac=0.5)`` their ``cka(gram_rbf(X, 0.5), gram_rbf(Y, 0.5))``.
    Needs n×n Gram matrices (O(n²) memory, float64), so when n > ``max_samples`` it uses a
    random subset of ``max_samples`` rows (the same rows of X and Y, drawn with ``seed``).
    """
    if max_samples < 4:
        raise ConfigError(f"rbf_cka: max_samples must be >= 4; got {max_samples}")
    x, y = check_pair(X, Y, 4 if debiased else 2, "rbf_cka")
    n = x.shape[0]
    if n > max_samples:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:max_samples].to(x.device)
        x, y = x[idx], y[idx]
    return cka_gram(gram_rbf(x, sigma_frac, median), gram_rbf(y, sigma_frac, median), debiased)
