"""The probe at scale, on small problems: the block + low-rank preconditioner agrees with the
full one and with scikit-learn; streaming features from a file (or an array) gives the in-memory
result and reads blocks within the memory budget; the feature file writer and row sources;
``runtime.memory`` validation. The big sizes live in ``benchmarks/scale.py``."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from richrep.config import parse_experiment
from richrep.data.feature_rows import ArrayRows, ConcatColumns, FileRows, concat_columns
from richrep.errors import ConfigError, DataError, StoreError
from richrep.evaluation import lowrank, solver, stream
from richrep.evaluation.probes import LinearProbe
from richrep.runtime.memory import MemoryBudget, parse_memory
from richrep.store.tensor_file import TensorFileWriter

GRID = (1e-2, 0.1, 1.0)


def catk(n: int, K: int = 3, p: int = 64, k: int = 5, seed: int = 0):
    """Cat-K-like features: K correlated ReLU views (p each) of one 12-d latent, whose teacher
    gives the labels; the last 1,000 rows are a test set."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n + 1000, 12, generator=g)
    y = z @ torch.randn(12, k, generator=g) + 0.7 * torch.randn(n + 1000, k, generator=g)
    A0 = torch.randn(12, p, generator=g)
    views = []
    for _ in range(K):
        A = 0.8 * A0 + 0.6 * torch.randn(12, p, generator=g)
        views.append(torch.relu(z @ A + torch.randn(n + 1000, p, generator=g) - 0.5))
    X = torch.cat(views, 1).numpy()
    y = y.argmax(1).numpy()
    return X[:n], y[:n], X[n:], y[n:]


@pytest.fixture(scope="module")
def data():
    return catk(3000)


@pytest.fixture
def force_lowrank(monkeypatch):
    """Every fit on the block + low-rank path, with blocks of one view and a small rank."""
    monkeypatch.setattr(solver, "FULL_MIN_D", 0)
    monkeypatch.setattr(solver, "FULL_MAX_D", 0)
    monkeypatch.setattr(lowrank, "BLOCK", 64)
    monkeypatch.setattr(lowrank, "RANK", 16)


def fit(X, y, **kw):
    return LinearProbe(**{"Cs": GRID, "device": "cpu", "tol": 1e-5, "max_iter": 500, **kw}).fit(
        X, y
    )


def test_lowrank_path_agrees_with_the_full_one_and_sklearn(data, force_lowrank, monkeypatch):
    X, y, Xt, yt = data
    low = fit(X, y, tol=1e-6)
    assert low.solver_stats_["converged"]
    monkeypatch.setattr(solver, "FULL_MIN_D", 10**9)
    full = fit(X, y, tol=1e-6)
    assert low.C_ == full.C_
    np.testing.assert_allclose(low.scores_, full.scores_, atol=1 / 500)
    np.testing.assert_allclose(low.predict_proba(Xt), full.predict_proba(Xt), atol=2e-3)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=low.C_, max_iter=5000, tol=1e-8))
    ref.fit(X, y)
    assert abs(low.score(Xt, yt) - ref.score(Xt, yt)) <= 0.003


def test_lowrank_preconditioner_inverts_its_matrix():
    """Woodbury with blocks: M^{-1} M = I for M = a (V S V^T + blockdiag(R)) + lam I."""
    g = torch.Generator().manual_seed(1)
    S = torch.randn(400, 50, generator=g, dtype=torch.float64) @ torch.randn(
        50, 60, generator=g, dtype=torch.float64
    )
    spec = lowrank.Spectrum(S, (S * S).mean(0), rank=8, block=25)
    pre = lowrank.LowRankPreconditioner(spec, 1e-3, 0.2, torch.float64)
    V = spec.V.to(torch.float64)
    B = torch.block_diag(*spec.R)
    M = 0.2 * (V * spec.s) @ V.t() + 0.2 * B + 1e-3 * torch.eye(60, dtype=torch.float64)
    q = torch.randn(61, 3, generator=g, dtype=torch.float64)
    r = pre(q)
    torch.testing.assert_close(M @ r[:-1], q[:-1], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(r[-1], q[-1] / 0.2)


def test_small_problems_keep_the_full_path():
    assert solver.choose_preconditioner(512) == "full"
    assert solver.choose_preconditioner(2048, 100_000, 100) == "full"  # d^3 is cheap beside n d k
    assert solver.choose_preconditioner(2048, 3_000, 10) == "lowrank"  # d^3 would dominate
    assert solver.choose_preconditioner(20480, 10**6, 1000) == "lowrank"
    assert solver.choose_preconditioner(1024, budget=1 << 26) == "lowrank"  # 25 MB > 1/4


def save(path, X, dtype=torch.float32, rows=700):
    with TensorFileWriter(path, "features", X.shape, dtype, {"key": "test"}) as w:
        for i in range(0, X.shape[0], rows):
            w.write(torch.as_tensor(X[i : i + rows]))
        w.close()
    return FileRows(path)


class Counting(ArrayRows):
    """An array source that records the largest block read."""

    largest = 0

    def read(self, start, stop):
        Counting.largest = max(Counting.largest, stop - start)
        return super().read(start, stop)


@pytest.mark.slow  # end to end (seconds): CI's slow tier keeps it
def test_streamed_fit_matches_in_memory_and_keeps_blocks_small(data, tmp_path):
    X, y, Xt, yt = data
    ref = fit(X, y)
    budget = 4 << 20  # below the in-memory fit's ~5 MB (features read + standardized copy)
    assert stream.fit_bytes(X.shape[0], X.shape[1], 5, copy=True) > budget
    source = save(tmp_path / "x.safetensors", X)
    tracemalloc.start()
    try:
        with MemoryBudget(budget).applied():
            got = fit(source, y)
            _, peak = tracemalloc.get_traced_memory()
            Counting.largest = 0
            fit(Counting(X), y, Cs=1.0)
    finally:
        tracemalloc.stop()
    assert got.C_ == ref.C_
    np.testing.assert_allclose(got.scores_, ref.scores_, atol=1 / 500)
    np.testing.assert_allclose(got.predict_proba(Xt), ref.predict_proba(Xt), atol=2e-3)
    assert abs(got.score(Xt, yt) - ref.score(Xt, yt)) <= 0.003
    rows = stream.block_rows(X.shape[1], budget)
    assert rows * X.shape[1] * 4 <= budget // 16
    assert 0 < Counting.largest <= rows
    assert peak < X.nbytes // 4  # numpy buffers (the file's blocks): never the whole matrix


def test_streamed_fit_with_given_validation_and_prediction_from_a_file(data, tmp_path):
    X, y, Xt, yt = data
    ref = LinearProbe(Cs=GRID, device="cpu").fit(X[:2400], y[:2400], X[2400:], y[2400:])
    train = save(tmp_path / "train.safetensors", X[:2400])
    with MemoryBudget(2 << 20).applied():
        got = LinearProbe(Cs=GRID, device="cpu").fit(train, y[:2400], ArrayRows(X[2400:]), y[2400:])
        test = save(tmp_path / "test.safetensors", Xt)
        assert got.score(test, yt) == got.score(Xt, yt)
    assert got.C_ == ref.C_
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=0.05, atol=5e-3)


def test_a_source_that_fits_is_read_whole_bit_identically(data, tmp_path):
    X, y, _, _ = data
    Xb = torch.as_tensor(X).to(torch.bfloat16).float().numpy()
    ref = fit(Xb, y)
    got = fit(save(tmp_path / "x.safetensors", Xb, torch.bfloat16), y)  # default budget: fits
    np.testing.assert_array_equal(got.coef_, ref.coef_)


@pytest.mark.parametrize("where", [(0, 3), (2400, 100)])
def test_streamed_nan_is_named(data, tmp_path, where):
    X, y, _, _ = data
    X = X.copy()
    X[where] = np.nan
    with (
        MemoryBudget(1 << 20).applied(),
        pytest.raises(DataError, match=rf"row {where[0]}, column {where[1]}"),
    ):
        fit(save(tmp_path / "x.safetensors", X), y)


def test_row_sources(tmp_path):
    X = np.arange(60, dtype=np.float32).reshape(20, 3)
    f = save(tmp_path / "x.safetensors", X, rows=7)
    both = concat_columns([f, torch.as_tensor(X)])
    assert isinstance(both, ConcatColumns) and both.shape == (20, 6)
    idx = np.array([19, 0, 5, 5, 12])
    np.testing.assert_array_equal(both[idx].to_tensor().numpy(), np.hstack([X, X])[idx])
    np.testing.assert_array_equal(f[torch.tensor([3, 1])][[1]].to_tensor().numpy(), X[[1]])
    assert torch.equal(
        concat_columns([torch.ones(2, 1), torch.zeros(2, 1)]), torch.tensor([[1.0, 0.0]] * 2)
    )
    with pytest.raises(DataError, match="out of range"):
        f[[20]]
    with pytest.raises(DataError, match="row counts"):
        ConcatColumns([f, ArrayRows(X[:5])])


def test_tensor_file_writer_refuses_short_and_odd_writes(tmp_path):
    path = tmp_path / "x.safetensors"
    w = TensorFileWriter(path, "features", (4, 3), torch.float32)
    with pytest.raises(StoreError, match="do not fit"):
        w.write(torch.zeros(2, 4))
    w.write(torch.zeros(2, 3))
    with pytest.raises(StoreError, match="2 of 4 rows"):
        w.close()
    assert not path.exists() and not list(tmp_path.iterdir())
    save(path, np.ones((4, 3), np.float32))
    path.write_bytes(path.read_bytes()[:-4])  # truncated after the fact
    with pytest.raises(StoreError, match="sha256"):
        FileRows(path)


@pytest.mark.parametrize(
    "value, match",
    [
        ("4 lightyears", "not a size"),
        ("0%", r"in \(0, 100\] %"),
        ("150%", r"in \(0, 100\] %"),
        ("x%", "a share is a number"),
        (-1, "must be positive"),
        (0, "must be positive"),
        ("1MB", "at least 64 MiB"),
        (True, "give bytes"),
        ([8], "give bytes"),
    ],
)
def test_runtime_memory_errors(tiny, value, match):
    with pytest.raises(ConfigError, match=rf"runtime\.memory.*{match}"):
        parse_experiment({**tiny, "runtime": {"memory": value}})


def test_runtime_memory_sizes(tiny):
    assert parse_memory("8GB") == 8 * 10**9
    assert parse_memory("512 MiB") == 512 << 20
    assert parse_memory("50%", total=1 << 34) == 1 << 33
    assert parse_memory(None, total=1 << 34) == 1 << 33
    assert parse_experiment({**tiny, "runtime": {"memory": "4GB"}}).runtime.memory == "4GB"
    assert MemoryBudget.resolve("2GiB").split(4).bytes == 512 << 20
    assert math.isclose(MemoryBudget.here().bytes, parse_memory(None), rel_tol=1e-9)


@pytest.mark.slow  # end to end (seconds): CI's slow tier keeps it
def test_extraction_writes_the_cache_in_chunks_and_transfer_streams_it(tiny, tmp_path, monkeypatch):
    """With a memory budget below the features, every cached split is extracted batch by batch
    into its file (``extract``, which returns a whole split, is never called) and the transfer
    probe gets it lazily; the rows match a run with the default budget."""
    from richrep.pipeline import run_experiment
    from richrep.representations import features
    from richrep.runtime import memory

    tiny["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [
            {"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}], "sizes": [10, "all"]}
        ],
    }
    ref = run_experiment(parse_experiment(tiny), tmp_path / "a", log=lambda m: None)
    monkeypatch.setattr(memory, "MINIMUM", 1)
    lazy, original = [], features.Featurizer.part

    def part(self, name, split, lazy_=False):
        out = original(self, name, split, lazy_)
        lazy.append(type(out).__name__)
        return out

    monkeypatch.setattr(features.Featurizer, "part", part)
    monkeypatch.setattr(features, "extract", lambda *a, **k: pytest.fail("whole-split extraction"))
    tiny["runtime"] = {"memory": 2_000}  # bytes: a quarter holds no split's features
    got = run_experiment(parse_experiment(tiny), tmp_path / "b", log=lambda m: None)
    assert "FileRows" in lazy
    rows = {(r["representation"], r["size"], r["draw"]): r["value"] for r in _rows(ref)}
    other = {(r["representation"], r["size"], r["draw"]): r["value"] for r in _rows(got)}
    assert rows.keys() == other.keys()
    assert max(abs(rows[k] - other[k]) for k in rows) <= 0.02


def _rows(run):
    import json

    return [json.loads(line) for line in run.store.results.read_text().splitlines()]


@pytest.mark.parametrize("d", [1, 64, 2048, 20480, 1 << 20])
@pytest.mark.parametrize("budget", [64 << 20, 4 << 30, 64 << 30])
def test_streamed_blocks_stay_below_the_allocators_fresh_page_size(d, budget):
    """Blocks of at most 8 MB (one row at least), 1/32 of the budget below that: larger ones
    are fresh pages from the kernel on every read, which bounded a pass."""
    rows = stream.block_rows(d, budget)
    assert rows >= 1
    assert rows * d * 4 <= max(stream.MAX_BLOCK, 4 * d)
    assert rows * d * 4 <= max(budget // 32, 4 * d)
