"""Permutation test and pairwise matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from richrep.analysis import (
    linear_cka,
    pairwise,
    permutation_test,
    procrustes,
)
from richrep.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _one_thread():
    """These matrices are tiny: one thread avoids OpenMP overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pair(related: bool, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    noise = rng.normal(size=(n, 4))
    y = x[:, :4] @ rng.normal(size=(4, 4)) + noise if related else noise
    return x, y


def test_related_data_give_the_smallest_p():
    x, y = pair(related=True)
    res = permutation_test("linear_cka", x, y, n_permutations=99, seed=1)
    assert res.observed == pytest.approx(linear_cka(x, y))
    assert res.p_value == pytest.approx(1 / 100)  # none of 99 permutations comes close
    assert res.null.shape == (99,) and res.null.max() < res.observed
    assert res.similarity is True


def test_independent_data_give_a_large_p():
    x, y = pair(related=False, seed=2)
    res = permutation_test("debiased_cka", x, y, n_permutations=99, seed=3)
    assert res.p_value > 0.1
    assert res.null.min() <= res.observed <= res.null.max()


def test_p_values_are_roughly_uniform_under_the_null():
    ps = [
        permutation_test(linear_cka, *pair(related=False, n=30, seed=s), n_permutations=19).p_value
        for s in range(30)
    ]
    assert 0.3 < np.mean(ps) < 0.7
    assert min(ps) >= 1 / 20 and max(ps) <= 1.0


def test_distance_measures_count_smaller_as_more_similar():
    x, y = pair(related=True)
    res = permutation_test("procrustes", x, y, n_permutations=49, seed=0)
    assert res.similarity is False
    assert res.observed == pytest.approx(procrustes(x, y))
    assert res.observed < res.null.min() and res.p_value == pytest.approx(1 / 50)


def test_permutation_test_options_and_errors():
    x, y = pair(related=True)
    kw = {"n_permutations": 5, "seed": 7, "sigma_frac": 0.5}
    a = permutation_test("rbf_cka", x, y, **kw)
    b = permutation_test("rbf_cka", torch.from_numpy(x), y, **kw)
    np.testing.assert_allclose(a.null, b.null)  # seeded, numpy or torch alike
    calls = []

    def custom(p, q, power: int = 1) -> float:
        calls.append(power)
        return float(np.corrcoef(np.asarray(p)[:, 0], np.asarray(q)[:, 0])[0, 1]) ** power

    permutation_test(custom, x, y, n_permutations=3, power=2)
    assert calls == [2] * 4
    with pytest.raises(ConfigError, match="n_permutations"):
        permutation_test("linear_cka", x, y, n_permutations=0)
    with pytest.raises(ConfigError, match="sigma_frac"):
        permutation_test("rbf_cka", x, y, sigma_frac=-1.0)
    with pytest.raises(ConfigError, match="unknown measure"):
        permutation_test("nope", x, y)
    with pytest.raises(DataError, match="X has 60 rows but Y has 50"):
        permutation_test("linear_cka", x, y[:50])


def test_pairwise_over_seeds():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(100, 6))
    feats = [z @ rng.normal(size=(6, 8)) + 0.5 * rng.normal(size=(100, 8)) for _ in range(3)]
    feats.append(torch.from_numpy(rng.normal(size=(100, 5))))
    m = pairwise(feats, "linear_cka")
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    assert m[0, 1] == pytest.approx(linear_cka(feats[0], feats[1]))
    assert m[:3, :3].min() > 3 * m[:3, 3].max()  # the unrelated 4th matrix stands out
    d = pairwise(feats, "procrustes")
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-10)
    svc = pairwise(feats[:2], "svcca", keep=0.9)
    assert svc.shape == (2, 2) and svc[0, 1] < 1.0

    def first_wins(p, q) -> float:  # not symmetric
        return float(np.asarray(p).shape[1])

    np.testing.assert_array_equal(pairwise(feats, first_wins, symmetric=False)[3], 5.0)
    with pytest.raises(DataError, match=r"features\[2\] has 99 rows but features\[0\] has 100"):
        pairwise([feats[0], feats[1], feats[2][:99]])
    with pytest.raises(DataError, match="at least one"):
        pairwise([])
