"""Convergent-learning unit comparisons: correlations, matching, sparse prediction, clusters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from richrep.analysis import (
    correlation_matrix,
    dead_units,
    match_units,
    sparse_prediction,
    spectral_clusters,
)
from richrep.errors import ConfigError, DataError


def ulp_noise(n: int, d: int) -> torch.Tensor:
    """A numerically dead unit: 0.1 or the next float32 up (rounding noise, std ~ 1e-8)."""
    up = torch.nextafter(torch.tensor(0.1), torch.tensor(1.0))
    pick = torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(0)).bool()
    return torch.where(pick, up, torch.tensor(0.1))


@pytest.fixture(autouse=True)
def _one_thread():
    """These matrices are tiny: one thread avoids OpenMP overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def features(n: int = 400, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d) + rng.normal(size=d)


def test_correlation_matrix_matches_numpy_and_handles_dead_units():
    x, y = features(), features(d=5, seed=1)
    y[:, 2] += x[:, 3]
    r = correlation_matrix(x, y)
    assert r.shape == (8, 5)
    np.testing.assert_allclose(r, np.corrcoef(x.T, y.T)[:8, 8:], atol=1e-12)
    np.testing.assert_allclose(correlation_matrix(x), np.corrcoef(x.T), atol=1e-12)
    xd = x.copy()
    xd[:, 4] = 2.0
    rd = correlation_matrix(xd, y)
    assert np.isfinite(rd).all()
    assert np.all(rd[4] == 0.0)
    np.testing.assert_allclose(np.delete(rd, 4, 0), np.delete(r, 4, 0), atol=1e-12)
    assert np.all(correlation_matrix(xd)[4] == 0.0)  # including with itself
    assert list(dead_units(xd)) == [4]
    assert list(dead_units(torch.from_numpy(xd).float())) == [4]
    assert dead_units(x).size == 0
    xf = torch.from_numpy(x).float()
    xf[:, [1, 6]] = ulp_noise(400, 2)
    assert list(dead_units(xf)) == [1, 6]
    assert np.all(correlation_matrix(xf, y)[[1, 6]] == 0.0)


@pytest.mark.parametrize("method", ["one_to_one", "semi"])
def test_matching_recovers_a_permutation(method):
    x = features(d=12)
    perm = np.random.default_rng(3).permutation(12)
    m = match_units(x, x[:, perm], method=method)
    np.testing.assert_allclose(m.correlations, 1.0, atol=1e-12)
    assert len(m.correlations) == 12
    # Y unit j is X unit perm[j], so X unit perm[j] must be matched to j
    np.testing.assert_array_equal(m.partners(), np.argsort(perm))


def test_one_to_one_is_the_maximum_weight_matching():
    x = features(n=200, d=5, seed=4)
    y = x @ np.random.default_rng(5).normal(size=(5, 5)) + features(n=200, d=5, seed=6)
    r = correlation_matrix(x, y)
    best = max(sum(r[i, p[i]] for i in range(5)) for p in itertools.permutations(range(5)))
    m = match_units(x, y)
    assert m.correlations.sum() == pytest.approx(best, abs=1e-12)
    assert np.all(np.diff(m.correlations) <= 0)  # sorted, best first
    np.testing.assert_allclose(m.correlations, r[m.x_units, m.y_units])
    semi = match_units(x, y, method="semi")
    np.testing.assert_allclose(np.sort(semi.correlations), np.sort(r.max(1)))
    assert semi.correlations.sum() >= m.correlations.sum() - 1e-12


def test_rectangular_dead_and_absolute_matching():
    x = features(d=6)
    y = -x[:, [4, 0, 2]]
    m = match_units(x, y)
    assert len(m.x_units) == 3
    assert m.correlations.max() < 0.3  # signed: the anti-correlated copies are not partners
    a = match_units(x, y, absolute=True)
    np.testing.assert_allclose(a.correlations, 1.0, atol=1e-12)
    assert list(a.partners()) == [1, -1, 2, -1, 0, -1]
    xd = x.copy()
    xd[:, 0] = 0.0
    d = match_units(xd, x, method="semi")
    assert list(d.dead_x) == [0] and d.partners()[0] == -1
    assert len(d.x_units) == 5 and np.isfinite(d.correlations).all()
    with pytest.raises(ConfigError, match="method"):
        match_units(x, y, method="greedy")


def test_sparse_prediction_of_a_linear_map():
    x = features(n=300, d=10, seed=7)
    a = np.zeros((10, 6))
    a[[0, 3, 5], [0, 1, 2]] = [1.0, -2.0, 0.5]
    a[:, 3:] = np.random.default_rng(8).normal(size=(10, 3))
    sp = sparse_prediction(x, x @ a, n_alphas=15, eps=1e-5)
    assert sp.alphas.shape == sp.nse.shape == sp.nonzero.shape == (15,)
    assert np.all(np.diff(sp.alphas) < 0)
    assert sp.nse[0] == pytest.approx(1.0, abs=1e-6) and sp.nonzero[0] == 0  # λ_max: all zero
    assert sp.nse[-1] < 1e-4  # small λ: Y = X·A is predicted exactly
    assert sp.nonzero[-1] >= 5.5  # (1 + 1 + 1 + 10 + 10 + 10) / 6
    assert np.all(np.diff(sp.nse) <= 1e-9)  # error falls as λ shrinks
    # the Gram-matrix error equals the error of explicit predictions on the same rows
    again = sparse_prediction(x, x @ a, alphas=sp.alphas, X_eval=x, Y_eval=x @ a)
    np.testing.assert_allclose(again.nse_units, sp.nse_units, atol=1e-8)


def test_sparse_prediction_of_unrelated_units_and_dead_units():
    x, y = features(n=200, seed=9), features(n=200, d=4, seed=10)
    y[:, 1] = 5.0
    xe, ye = features(n=200, seed=11), features(n=200, d=4, seed=12)
    sp = sparse_prediction(x, y, alphas=[0.5, 0.1, 0.01], X_eval=xe, Y_eval=ye)
    assert list(sp.dead_y) == [1] and list(sp.units) == [0, 2, 3]
    assert np.isfinite(sp.nse).all() and np.all(sp.nse > 0.9)  # nothing to predict
    xd = x.copy()
    xd[:, 2] = -1.0
    sd = sparse_prediction(xd, xd[:, :4], alphas=[1e-4])  # dead in X and in Y
    assert list(sd.dead_y) == [2] and list(sd.units) == [0, 1, 3]
    assert np.isfinite(sd.nse_units).all() and sd.nse[0] < 1e-6
    with pytest.raises(ConfigError, match="both X_eval and Y_eval"):
        sparse_prediction(x, y, X_eval=xe)
    with pytest.raises(ConfigError, match="positive"):
        sparse_prediction(x, y, alphas=[0.1, -1.0])
    with pytest.raises(DataError, match="columns"):
        sparse_prediction(x, y, X_eval=xe[:, :3], Y_eval=ye)


def test_spectral_clusters_mix_a_permuted_copy():
    x = features(n=300, d=8, seed=13)
    y = x[:, np.random.default_rng(14).permutation(8)]
    c = spectral_clusters(x, y, n_clusters=8)
    assert c.n_mixed == 8
    np.testing.assert_array_equal(c.counts, np.ones((8, 2), dtype=int))
    np.testing.assert_array_equal(c.sizes, 2)


def test_spectral_clusters_do_not_mix_unrelated_networks():
    rng = np.random.default_rng(15)

    def grouped(seed: int) -> np.ndarray:
        g = np.random.default_rng(seed)
        z = g.normal(size=(300, 2))
        return np.repeat(z, 4, axis=1) + 0.3 * g.normal(size=(300, 8))

    x, y = grouped(1), grouped(2)
    y[:, 7] = 0.0  # a dead unit is left out (label -1)
    c = spectral_clusters(x, y, n_clusters=4, seed=int(rng.integers(100)))
    assert c.n_mixed == 0
    assert c.labels_y[7] == -1 and c.sizes.sum() == 15
    assert sorted(c.sizes) == [3, 4, 4, 4]
    assert spectral_clusters(x, x, n_clusters=2).n_mixed == 2
    with pytest.raises(ConfigError, match="n_clusters"):
        spectral_clusters(x, y, n_clusters=16)


def test_held_out_sparse_prediction_is_relative_to_the_fitted_mean():
    """Held-out error of all-zero weights is exactly 1 even when the held-out rows of a unit
    vary far more than the fitted ones did (a ReLU unit nearly silent on the fitted half)."""
    x, xe = features(n=300, d=8, seed=21), features(n=300, d=8, seed=22)
    y, ye = x[:, :3].copy(), xe[:, :3].copy()
    y[:, 2] = 0.01 * y[:, 2]  # little variance where fitted...
    ye[:, 2] = 10.0 + ye[:, 2]  # ...a shifted, wider unit held out
    sp = sparse_prediction(x, y, n_alphas=10, eps=1e-4, X_eval=xe, Y_eval=ye)
    assert sp.nonzero[0] == 0 and np.allclose(sp.nse_units[:, 0], 1.0)
    assert sp.nse_units[0, -1] < 1e-3 and sp.nse_units[1, -1] < 1e-3  # copies: predicted
