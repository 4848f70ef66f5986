"""The probe on features larger than its memory budget: every pass streams them in blocks.

:class:`LinearProbe <richrep.evaluation.probes.LinearProbe>` holds the standardized features
in memory while they (and the solver's work) fit ``runtime.memory``
(:mod:`richrep.runtime.memory`); above, :func:`fit_streamed` reads them block by block from
their :class:`~richrep.data.feature_rows.RowSource` (a feature file on disk, an array) for
each function evaluation, standardizing each block on the fly, with the next block read by a
second thread meanwhile. Same objective, same solver (:func:`richrep.evaluation.solver.
solve_grid`), same validation split and choice of C; the sums run block by block, so results
agree with the in-memory fit to round-off, not bit for bit.

What it holds: a few blocks (:func:`block_rows`: 1/32 of the budget each, 8 MB at most), the solver's
parameters and curvature pairs (2 x 20 x (d + 1) x k), and the sample the preconditioner is
built from (at most :data:`~richrep.evaluation.solver.GRAM_ROWS` rows, a quarter of the budget).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from richrep.data.feature_rows import ArrayRows, RowSource, is_row_source
from richrep.errors import DataError
from richrep.evaluation.inputs import (
    as_labels,
    check_finite,
    check_val_labels,
    class_indices,
    validation_rows,
)
from richrep.evaluation.lowrank import Spectrum
from richrep.evaluation.solver import (
    CHUNK,
    GRAM_ROWS,
    MEMORY,
    PathResult,
    choose_preconditioner,
    solve_grid,
)
from richrep.runtime.threads import ThreadBudget, current_threads

# bytes of float32 features per block, at most: a block above glibc's mmap threshold (32 MB at
# most) is fresh pages on every read, and faulting them in bounded a pass; read + convert +
# standardize of bf16 rows ran at 0.25 GB/s in blocks of 115 MB, 0.98 in 16 MB, 1.47 in 4 MB
MAX_BLOCK = 8 << 20
MIN_BLOCK = 64 << 10

Part = tuple[RowSource, np.ndarray | None]  # a source and its rows (sorted), None for all


def as_source(X: Any) -> RowSource:
    """``X`` (a row source, tensor or array, e.g. a ``np.memmap``) as a :class:`RowSource`."""
    return X if is_row_source(X) else ArrayRows(X)


def fit_bytes(n: int, d: int, k: int, copy: bool) -> int:
    """What an in-memory fit of ``n`` x ``d`` features with ``k`` classes holds beyond its input:
    the standardized float32 copy (and the float32 input itself when it is read from disk,
    ``copy``), logits and their gradient, curvature pairs and the preconditioner."""
    feats = n * d * 4 * (2 if copy else 1)
    full = choose_preconditioner(d, n, k) == "full"
    precond = 3 * 8 * d * d if full else 4 * d * min(n, GRAM_ROWS)
    return feats + 3 * n * k * 4 + 2 * (MEMORY + 4) * (d + 1) * k * 4 + precond


def block_rows(d: int, budget: int) -> int:
    """Rows per streamed block: 1/32 of the budget as float32, within [64 kB, 8 MB]."""
    size = min(MAX_BLOCK, max(MIN_BLOCK, budget // 32))
    return max(1, size // (4 * max(d, 1)))


def _rows_of(part: Part) -> int:
    return part[0].shape[0] if part[1] is None else part[1].size


def _read(part: Part, start: int, stop: int) -> torch.Tensor:
    source, rows = part
    return source.read(start, stop) if rows is None else source.take(rows[start:stop], stop - start)


def _file_bytes(source: RowSource, rows: int) -> int:
    """Bytes a block of ``rows`` rows takes where ``source`` keeps it (a file's own dtype)."""
    parts = getattr(source, "parts", None)
    if parts is not None:
        return sum(_file_bytes(p, rows) for p in parts)
    base = getattr(source, "base", source)
    file = getattr(base, "file", None)
    return rows * (file.row_bytes if file is not None else 4 * source.shape[1])


def stream_stats(
    source: RowSource, name: str, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale and non-constant columns of ``source`` (as
    :func:`~richrep.evaluation.inputs.standardize_stats`, over the same 8,192-row blocks, so the
    same numbers), checking every value is finite (:class:`DataError` naming the first bad one)."""
    n, d = source.shape
    step = block_rows(d, budget)
    step = step // CHUNK * CHUNK or step  # whole 8,192-row blocks where they fit
    x0 = None
    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    varies = torch.zeros(d, dtype=torch.bool)
    for start, block in source.blocks(step):
        check_finite(block, name, start)
        x0 = block[0].clone() if x0 is None else x0
        for i in range(0, block.shape[0], CHUNK):
            c = block[i : i + CHUNK] - x0
            s1 += c.sum(0, dtype=torch.float64)
            s2 += (c * c).sum(0, dtype=torch.float64)
            varies |= (c != 0).any(0)
    shift = s1 / n
    mean = (x0.to(torch.float64) + shift).numpy()
    var = (s2 / n - shift * shift).clamp_min(0).numpy()
    eps = np.finfo(np.float64).eps
    active = varies.numpy() & (var > n * eps * var + (n * mean * eps) ** 2)
    return mean, np.where(active, np.sqrt(var), 1.0), active


class Standardize:
    """``(X[:, active] - mean) / scale`` of a block, in the solver's dtype on its device."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, active: np.ndarray, dtype, device):
        self.cols = torch.as_tensor(np.flatnonzero(active), device=device)
        self.m = torch.as_tensor(mean[active], device=device, dtype=dtype)
        self.s = torch.as_tensor(scale[active], device=device, dtype=dtype)
        self.dtype, self.device = dtype, device

        self.all = bool(active.all())

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        """Standardized ``block`` (a fresh tensor the caller gives up: worked on in place)."""
        block = block.to(self.device)
        if not self.all:
            block = block.index_select(1, self.cols)
        return block.to(self.dtype).sub_(self.m).div_(self.s)


class Blocks:
    """The standardized rows of ``parts`` and their labels, block by block, the next block read
    by a background thread while the caller works on the current one."""

    def __init__(
        self,
        parts: Sequence[Part],
        labels: np.ndarray,
        std: Standardize,
        rows: int,
        stats: dict[str, float],
    ) -> None:
        self.parts, self.std, self.rows, self.stats = list(parts), std, rows, stats
        self.y = torch.as_tensor(labels, device=std.device)
        self.n = sum(_rows_of(p) for p in self.parts)

    def _load(self, part: Part, start: int, stop: int) -> torch.Tensor:
        t = time.perf_counter()
        block = _read(part, start, stop)
        self.stats["bytes"] += _file_bytes(part[0], block.shape[0])
        block = self.std(block)
        self.stats["load_s"] += time.perf_counter() - t
        return block

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        todo = [
            (p, i, min(_rows_of(p), i + self.rows))
            for p in self.parts
            for i in range(0, _rows_of(p), self.rows)
        ]
        if not todo:
            return
        self.stats["passes"] += 1
        # the reader converts and standardizes on the caller's threads: while the solver waits
        # for it (a pass bound by reading), they would idle anyway
        budget = ThreadBudget.here() or ThreadBudget(current_threads())  # the caller's
        with ThreadPoolExecutor(1, "richrep-stream", initializer=budget.apply) as pool:
            ahead = pool.submit(self._load, *todo[0])
            at = 0
            for j in range(len(todo)):
                t = time.perf_counter()
                block = ahead.result()
                self.stats["wait_s"] += time.perf_counter() - t
                if j + 1 < len(todo):
                    ahead = pool.submit(self._load, *todo[j + 1])
                yield block, self.y[at : at + block.shape[0]]
                at += block.shape[0]
                del block


class StreamedMultinomial:
    """:class:`~richrep.evaluation.solver.Multinomial`'s objective and gradient, summed over
    the blocks of one pass."""

    def __init__(self, blocks: Blocks, d: int, k: int) -> None:
        self.blocks, self.d, self.k, self.n = blocks, d, k, blocks.n
        self.evals = 0
        self.flops = 0

    def __call__(self, Wt: torch.Tensor, lam: float) -> tuple[float, torch.Tensor]:
        W, b = Wt[:-1], Wt[-1]
        g = torch.zeros_like(Wt)
        ce = 0.0
        for X, y in self.blocks:
            Z = torch.addmm(b, X, W)  # (rows, k)
            lse = torch.logsumexp(Z, 1)
            z_true = Z.gather(1, y[:, None].long())[:, 0]
            ce += float(lse.to(torch.float64).sum() - z_true.to(torch.float64).sum())
            E = torch.exp(Z - lse[:, None])
            E.scatter_add_(1, y[:, None].long(), torch.full_like(z_true[:, None], -1.0))
            g[:-1].addmm_(X.t(), E)
            g[-1] += E.sum(0)
        g /= self.n
        g[:-1] += lam * W
        f = ce / self.n + 0.5 * lam * float((W.to(torch.float64) ** 2).sum())
        self.evals += 1
        self.flops += 4 * self.n * self.d * self.k
        return f, g


class Streamed:
    """The problem :func:`~richrep.evaluation.solver.solve_grid` solves, streamed: the parts
    ``train`` then ``val`` (labels in that order), standardized by ``std``."""

    def __init__(
        self,
        train: Sequence[Part],
        val: Sequence[Part],
        labels: np.ndarray,
        k: int,
        std: Standardize,
        budget: int,
    ) -> None:
        self.train, self.val, self.std, self.k, self.budget = list(train), list(val), std, k, budget
        self.n_train = sum(_rows_of(p) for p in self.train)
        self.labels = labels
        self.d = int(std.cols.numel())
        self.dtype, self.device = std.dtype, std.device
        self.has_val = self.n_train < labels.size
        self.rows = block_rows(self.d, budget)
        # passes over the data, bytes read (in the source's dtype), seconds the reader thread
        # spent reading + standardizing, seconds the solver waited for it
        self.stats: dict[str, float] = {"passes": 0, "bytes": 0, "load_s": 0.0, "wait_s": 0.0}

    def _blocks(self, parts: Sequence[Part], labels: np.ndarray) -> Blocks:
        return Blocks(parts, labels, self.std, self.rows, self.stats)

    def objective(self, everything: bool) -> StreamedMultinomial:
        parts = self.train + self.val if everything else self.train
        labels = self.labels if everything else self.labels[: self.n_train]
        return StreamedMultinomial(self._blocks(parts, labels), self.d, self.k)

    @torch.no_grad()
    def val_accuracy(self, Wt: torch.Tensor) -> float:
        right = 0
        for X, y in self._blocks(self.val, self.labels[self.n_train :]):
            right += int((torch.addmm(Wt[-1], X, Wt[:-1]).argmax(1) == y).sum())
        return right / (self.labels.size - self.n_train)

    def statistics(self, kind: str) -> torch.Tensor | Spectrum:
        """The preconditioner's statistics from at most :data:`GRAM_ROWS` evenly spaced training
        rows (fewer when a quarter of the budget cannot hold them); the diagonal is 1, the
        variance of a standardized feature."""
        n_s = max(1, min(self.n_train, GRAM_ROWS, self.budget // 4 // (4 * max(self.d, 1))))
        picks = np.unique(np.linspace(0, self.n_train - 1, n_s).round().astype(np.int64))
        sample, at = [], 0
        for part in self.train:
            size = _rows_of(part)
            mine = picks[(picks >= at) & (picks < at + size)] - at
            if mine.size:
                rows = mine if part[1] is None else part[1][mine]
                sample.append(self.std(part[0].take(rows, self.rows)))
            at += size
        S = torch.cat(sample)
        diag = torch.ones(self.d, dtype=torch.float64, device=self.device)
        if kind == "lowrank":
            return Spectrum(S, diag)
        sigma = (S.t() @ S).to(torch.float64) / S.shape[0]
        sigma.diagonal().copy_(torch.maximum(diag, sigma.diagonal()))
        return sigma


def _val_parts(
    est: Any, X_val: Any, y_val: Any, classes: np.ndarray, d: int, budget: int
) -> tuple[RowSource, np.ndarray]:
    source = as_source(X_val)
    if source.shape[1] != d:
        raise DataError(
            f"X_val has {source.shape[1]} features, but {type(est).__name__} is expecting {d} "
            f"features as input"
        )
    yv = as_labels(y_val, source.shape[0], "y_val")
    check_val_labels(yv, classes)
    for start, block in source.blocks(block_rows(d, budget)):
        check_finite(block, "X_val", start)
    return source, np.searchsorted(classes, yv)


def fit_streamed(
    est: Any,
    X: Any,
    y: Any,
    X_val: Any,
    y_val: Any,
    Cs: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    budget: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, PathResult, dict]:
    """The probe ``est``'s fit (its ``max_iter``, ``tol``, ``refit``, ``val_fraction`` and
    ``random_state``) with the features streamed from disk or memory in blocks. Returns
    ``(classes, mean, scale, active, Cs, path, stream statistics)`` for the estimator to
    keep."""
    source = as_source(X)
    n, d = source.shape
    if n == 0 or d == 0:
        raise DataError(f"X is empty (shape {source.shape})")
    y = as_labels(y, n, "y")
    classes, y_idx = class_indices(y)
    if (X_val is None) != (y_val is None):
        raise DataError("give both X_val and y_val, or neither")
    est.n_features_in_ = d
    if hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    mean, scale, active = stream_stats(source, "X", budget)
    if X_val is not None:
        vsource, yv = _val_parts(est, X_val, y_val, classes, d, budget)
        train, val, labels = [(source, None)], [(vsource, None)], np.concatenate([y_idx, yv])
    else:
        tr, va, Cs = validation_rows(y_idx, Cs, float(est.val_fraction), est.random_state)
        train, val = [(source, tr)], [(source, va)] if va.size else []
        labels = np.concatenate([y_idx[tr], y_idx[va]])
    std = Standardize(mean, scale, active, dtype, device)
    problem = Streamed(train, val, labels, classes.size, std, budget)
    kind = choose_preconditioner(problem.d, problem.n_train, classes.size, budget)
    path = solve_grid(problem, Cs, est.max_iter, est.tol, est.refit, kind)
    return classes, mean, scale, active, Cs, path, {**problem.stats, "block_rows": problem.rows}


def plan_inputs(X: Any, X_val: Any, y: Any, budget: int) -> tuple[Any, Any, bool]:
    """``(X, X_val, stream)``: whether a fit of these inputs streams them (its in-memory work,
    :func:`fit_bytes`, would exceed ``budget`` bytes); if not, row sources are read into
    memory (float32 tensors) for the in-memory fit."""
    inputs = [v for v in (X, X_val) if v is not None]
    if X is None or not all(
        is_row_source(v) or (hasattr(v, "shape") and len(v.shape) == 2) for v in inputs
    ):
        return X, X_val, False  # lists and the like: the in-memory path validates them
    n = sum(int(v.shape[0]) for v in inputs)
    d = int(X.shape[1])
    try:
        labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        k = max(2, np.unique(labels).size)
    except (TypeError, ValueError):
        k = 2
    copy = any(is_row_source(v) or isinstance(v, np.memmap) for v in inputs)
    if fit_bytes(n, d, k, copy) > budget:
        return X, X_val, True
    read = [v.to_tensor() if is_row_source(v) else v for v in (X, X_val)]
    return read[0], read[1], False
