"""Mean CCA, SVCCA, Procrustes: known values, invariances, rank deficiency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from richrep.analysis import canonical_correlations, mean_cca, procrustes, svcca
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


def whitened(n: int, k: int, seed: int = 0) -> np.ndarray:
    """n×k centered columns, orthonormal over the samples (exactly uncorrelated)."""
    z = np.random.default_rng(seed).normal(size=(n, k))
    q, _ = np.linalg.qr(z - z.mean(0))
    return q * math.sqrt(n)


def related(n: int = 300, d1: int = 10, d2: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    x = z @ rng.normal(size=(5, d1)) + rng.normal(size=(n, d1))
    y = z @ rng.normal(size=(5, d2)) + rng.normal(size=(n, d2))
    return x, y


def test_known_canonical_correlations():
    z = whitened(400, 3)
    x = z[:, :2]
    y = np.stack([z[:, 0], 0.6 * z[:, 1] + 0.8 * z[:, 2]], 1)  # ρ = (1, 0.6)
    np.testing.assert_allclose(canonical_correlations(x, y), [1.0, 0.6], atol=1e-10)
    assert mean_cca(x, y) == pytest.approx((1 + 0.36) / 2, abs=1e-10)
    assert svcca(x, y, keep=1.0) == pytest.approx(0.8, abs=1e-10)
    a = np.array([[2.0, 1.0], [-1.0, 3.0]])  # an invertible map changes nothing
    assert mean_cca(x @ a, y + 7.0) == pytest.approx(0.68, abs=1e-10)


@pytest.mark.parametrize("fn", [mean_cca, svcca])
def test_identity_and_symmetry(fn):
    x, y = related()
    assert fn(x, x) == pytest.approx(1.0, abs=1e-10)
    assert fn(x, y) == pytest.approx(fn(y, x), abs=1e-10)
    assert 0.1 < fn(x, y) < 0.99


def test_mean_cca_invariant_to_invertible_linear_maps():
    x, y = related()
    rng = np.random.default_rng(9)
    a = rng.normal(size=(10, 10)) + 3 * np.eye(10)
    b = rng.normal(size=(8, 8)) + 3 * np.eye(8)
    assert np.linalg.cond(a) < 1e3
    base = mean_cca(x, y)
    assert mean_cca(x @ a + 4.0, y @ b - 1.0) == pytest.approx(base, abs=1e-9)
    assert mean_cca(x, np.exp(y)) != pytest.approx(base, abs=1e-3)  # nonlinear maps do matter


def test_svcca_invariances():
    x, y = related()
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(10, 10)))
    base = svcca(x, y)
    assert svcca(3.0 * (x @ q) + 2.0, y) == pytest.approx(base, abs=1e-10)
    a = np.random.default_rng(3).normal(size=(10, 10)) + 3 * np.eye(10)
    full = svcca(x, y, keep=1.0)
    assert svcca(x @ a, y, keep=1.0) == pytest.approx(full, abs=1e-9)
    rho = canonical_correlations(x, y)
    assert full == pytest.approx(rho.mean(), abs=1e-12)


def test_svcca_drops_low_variance_directions():
    z = whitened(500, 2, seed=4)
    x = np.stack([10.0 * z[:, 0], 0.1 * z[:, 1]], 1)  # 2nd direction: 1e-4 of the variance
    y = z[:, 1:2]
    assert svcca(x, y) == pytest.approx(0.0, abs=1e-10)  # 99% keeps only z0, unrelated to y
    assert svcca(x, y, keep=1.0) == pytest.approx(1.0, abs=1e-10)
    assert mean_cca(x, y) == pytest.approx(1.0, abs=1e-10)


def test_rank_deficiency_dead_units_and_wide_inputs():
    x, y = related(n=100)
    dup = np.concatenate([x, x[:, :3] * 2.0 - 1.0, np.full((100, 2), 4.0)], 1)
    assert mean_cca(dup, x) == pytest.approx(1.0, abs=1e-8)
    assert svcca(dup, x, keep=1.0) == pytest.approx(1.0, abs=1e-8)
    assert len(canonical_correlations(dup, y)) == 8  # min(rank 10, rank 8)
    assert mean_cca(dup, y) == pytest.approx(mean_cca(x, y), abs=1e-8)
    wide = np.random.default_rng(1).normal(size=(20, 50))  # d > n: rank 19
    v = mean_cca(wide, x[:20])
    assert math.isfinite(v) and v == pytest.approx(1.0, abs=1e-6)  # overfits: all ρ = 1
    const = np.full((100, 3), 1.5)
    assert mean_cca(const, y) == 0.0 and svcca(const, y) == 0.0
    assert canonical_correlations(const, y).size == 0
    noisy = ulp_noise(100, 3)
    assert mean_cca(noisy, y) == 0.0 and procrustes(noisy, y) == 2.0
    assert mean_cca(torch.cat([torch.from_numpy(x).float(), noisy], 1), x) == pytest.approx(1.0)


def test_procrustes_zero_for_rotations_scaling_translation():
    x, _ = related()
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(10, 10)))
    assert procrustes(x, x) == pytest.approx(0.0, abs=1e-10)
    assert procrustes(x, 0.3 * (x @ q) - 8.0) == pytest.approx(0.0, abs=1e-10)
    padded = np.concatenate([x @ q, np.zeros((x.shape[0], 3))], 1)  # d1 ≠ d2
    assert procrustes(x, padded) == pytest.approx(0.0, abs=1e-10)
    assert procrustes(x, x * np.linspace(0.1, 3.0, 10)) > 0.01  # anisotropic scaling is not


def test_procrustes_known_values_and_symmetry():
    # 1-d: X̂ᵀŶ = r, so d = 2 − 2|r|; hand case r = 1/2 (see the CKA 3×1 case)
    assert procrustes(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 2.0])) == pytest.approx(1.0)
    z = whitened(200, 2, seed=6)
    assert procrustes(z[:, :1], z[:, 1:]) == pytest.approx(2.0, abs=1e-12)  # uncorrelated
    x, y = related()
    d = procrustes(x, y)
    assert 0.0 < d < 2.0
    assert d == pytest.approx(procrustes(y, x), abs=1e-12)
    assert procrustes(np.full((10, 2), 1.0), x[:10]) == 2.0  # constant: no NaN, farthest
    assert procrustes.similarity is False and svcca.similarity is True


def test_torch_inputs_and_validation():
    x, y = related()
    want = mean_cca(x, y)
    assert mean_cca(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(
        want, abs=1e-5
    )
    with pytest.raises(DataError, match="X has 300 rows but Y has 299"):
        svcca(x, y[:-1])
    with pytest.raises(DataError, match="non-finite"):
        procrustes(x, np.where(y > 2.5, np.inf, y))
    with pytest.raises(ConfigError, match="keep"):
        svcca(x, y, keep=0.0)
    with pytest.raises(ConfigError, match="eps"):
        mean_cca(x, y, eps=2.0)
