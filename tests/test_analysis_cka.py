"""CKA: invariances, identity, feature-space vs Gram forms, streaming, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from richrep.analysis import (
    MEASURES,
    StreamingCKA,
    cka_gram,
    debiased_cka,
    gram_linear,
    gram_rbf,
    hsic_gram,
    is_similarity,
    linear_cka,
    linear_cka_gram,
    rbf_cka,
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


def related(n: int = 200, d1: int = 12, d2: int = 9, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    x = z @ rng.normal(size=(4, d1)) + 0.5 * rng.normal(size=(n, d1))
    y = np.tanh(z @ rng.normal(size=(4, d2))) + 0.5 * rng.normal(size=(n, d2))
    return x, y


def orthogonal(d: int, seed: int = 1) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


FEATURE_CKA = [linear_cka, debiased_cka]
ALL_CKA = [linear_cka, debiased_cka, rbf_cka]


# --- identity, symmetry, invariances ---------------------------------------------------------


@pytest.mark.parametrize("fn", ALL_CKA)
def test_identity_and_symmetry(fn):
    x, y = related()
    assert fn(x, x) == pytest.approx(1.0, abs=1e-12)
    assert fn(x, y) == pytest.approx(fn(y, x), abs=1e-12)
    assert 0.05 < fn(x, y) < 0.99


@pytest.mark.parametrize("fn", ALL_CKA)
def test_invariant_to_orthogonal_maps_isotropic_scaling_translation(fn):
    x, y = related()
    base = fn(x, y)
    q = orthogonal(x.shape[1])
    assert fn(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert fn(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert fn(x + 100.0, y - 3.0) == pytest.approx(base, abs=1e-9)
    assert fn(-2.0 * (x @ q) + 5.0, y) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("fn", FEATURE_CKA)
def test_not_invariant_to_anisotropic_scaling(fn):
    x, y = related()
    scale = np.linspace(0.1, 10.0, x.shape[1])
    assert abs(fn(x * scale, y) - fn(x, y)) > 1e-3


def test_hand_computed_3x1():
    # centered x = (-1, 0, 1), y = (0, -1, 1): <x,y> = 1, |x|² = |y|² = 2 -> CKA = 1/4 = r².
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 2.0])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-15)
    assert linear_cka_gram(x, y) == pytest.approx(0.25, abs=1e-15)
    # biased HSIC = tr(KHLH)/(n-1)² = <x,y>²/4 = 1/4
    assert hsic_gram(gram_linear(x), gram_linear(y)) == pytest.approx(0.25, abs=1e-15)


def test_one_dimensional_is_squared_correlation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=500)
    assert linear_cka(x, -3.0 * x + 5.0) == pytest.approx(1.0, abs=1e-12)
    y = x + rng.normal(size=500)
    r = np.corrcoef(x, y)[0, 1]
    assert linear_cka(x, y) == pytest.approx(r**2, abs=1e-12)


def test_independent_data_large_n_is_small():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20_000, 10)), rng.normal(size=(20_000, 10))
    assert linear_cka(x, y) < 0.005  # ≈ √(d1 d2)/n = 5e-4
    assert abs(debiased_cka(x, y)) < 0.002
    assert linear_cka(x, x[:, :5] + 0.1 * y[:, :5]) > 0.4


def test_debiased_removes_small_sample_bias():
    rng = np.random.default_rng(5)
    biased, debiased = [], []
    for _ in range(20):
        x, y = rng.normal(size=(30, 20)), rng.normal(size=(30, 20))
        biased.append(linear_cka(x, y))
        debiased.append(debiased_cka(x, y))
    assert np.mean(biased) > 0.3  # independent, yet large: the bias of the plug-in HSIC
    assert abs(np.mean(debiased)) < 0.05
    assert min(debiased) < 0.0  # negative estimates happen and are reported as they are
    assert all(math.isfinite(v) for v in debiased)


# --- feature space == Gram form ----------------------------------------------------------------


@pytest.mark.parametrize("n,d1,d2", [(4, 3, 2), (7, 1, 1), (50, 12, 9), (30, 60, 45), (120, 5, 80)])
@pytest.mark.parametrize("debiased", [False, True])
def test_feature_space_equals_gram_form(n, d1, d2, debiased):
    rng = np.random.default_rng(n + d1)
    x = rng.normal(size=(n, d1)) * rng.uniform(0.1, 3, d1) + rng.normal(size=d1) * 10
    y = np.abs(x[:, :1]) @ rng.normal(size=(1, d2)) + rng.normal(size=(n, d2)) - 4.0
    fast = debiased_cka(x, y) if debiased else linear_cka(x, y)
    assert fast == pytest.approx(linear_cka_gram(x, y, debiased=debiased), abs=1e-8)
    xc, yc = x - x.mean(0), y - y.mean(0)  # the Gram form is exact only without big means
    assert fast == pytest.approx(linear_cka_gram(xc, yc, debiased=debiased), abs=1e-11)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 25),
    d1=st.integers(1, 6),
    d2=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    shift=st.floats(-1e3, 1e3),
)
def test_feature_space_equals_gram_form_property(n, d1, d2, seed, shift):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d1)), rng.normal(size=(n, d2))
    for debiased, fn in ((False, linear_cka), (True, debiased_cka)):
        got = fn(x + shift, y)  # the feature-space forms center in float64 first
        assert math.isfinite(got)
        assert got == pytest.approx(linear_cka_gram(x, y, debiased=debiased), abs=1e-9)


def test_chunked_accumulation_equals_single_pass(monkeypatch):
    import richrep.analysis._common as common

    x, y = related(n=1000)
    want = (linear_cka_gram(x, y), linear_cka_gram(x, y, debiased=True))
    x = x + 1e3  # large mean: shifting must keep precision
    monkeypatch.setattr(common, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(common, "MIN_CHUNK_ROWS", 7)  # 143 chunks, the last one short
    assert common.chunk_rows(12, 9) == 7
    assert linear_cka(x, y) == pytest.approx(want[0], abs=1e-11)
    assert debiased_cka(x, y) == pytest.approx(want[1], abs=1e-11)


def test_float32_and_torch_inputs():
    x, y = related(n=3000)
    want = linear_cka(x, y)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    assert linear_cka(xt, yt) == pytest.approx(want, abs=1e-6)
    assert linear_cka(x, yt) == pytest.approx(want, abs=1e-6)  # mixed numpy / torch
    assert linear_cka(xt.half(), yt.bfloat16()) == pytest.approx(want, abs=2e-2)
    assert debiased_cka(xt, yt) == pytest.approx(debiased_cka(x, y), abs=1e-6)
    assert isinstance(linear_cka(xt, yt), float)


# --- streaming -------------------------------------------------------------------------------


SPLITS = [[200], [100, 100], [1, 2, 3, 194], [7] * 28 + [4], [50, 1, 149]]


@pytest.mark.parametrize("sizes", SPLITS)
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("buffer_rows", [0, None])
def test_streaming_equals_full(sizes, debiased, buffer_rows):
    x, y = related(n=200)
    x = x + 50.0  # the first batch's mean is a poor shift for later batches
    s = StreamingCKA(debiased=debiased, buffer_rows=buffer_rows)
    lo = 0
    for k in sizes:
        s.update(x[lo : lo + k], torch.from_numpy(y[lo : lo + k]))
        lo += k
    assert s.n == 200
    full = debiased_cka(x, y) if debiased else linear_cka(x, y)
    assert s.value() == pytest.approx(full, abs=1e-11)


def test_streaming_value_midway_and_errors():
    x, y = related(n=100)
    s = StreamingCKA(buffer_rows=10)
    s.update(x[:60], y[:60])
    assert s.value() == pytest.approx(linear_cka(x[:60], y[:60]), abs=1e-12)
    s.update(x[60:], y[60:])
    assert s.value() == pytest.approx(linear_cka(x, y), abs=1e-12)
    with pytest.raises(DataError, match="columns but earlier batches had 12 and 9"):
        s.update(x[:5, :3], y[:5])
    with pytest.raises(DataError, match="X has 5 rows but Y has 4"):
        s.update(x[:5], y[:4])
    with pytest.raises(DataError, match="at least 4 rows"):
        StreamingCKA(debiased=True).update(x[:3], y[:3]).value()
    with pytest.raises(ConfigError, match="buffer_rows"):
        StreamingCKA(buffer_rows=-1)


# --- RBF ---------------------------------------------------------------------------------------


def test_rbf_large_bandwidth_tends_to_linear():
    x, y = related(n=150)
    assert rbf_cka(x, y, sigma_frac=200.0) == pytest.approx(linear_cka(x, y), abs=1e-3)
    assert abs(rbf_cka(x, y, sigma_frac=0.2) - linear_cka(x, y)) > 1e-2


def test_rbf_subsampling_is_seeded():
    x, y = related(n=300)
    a = rbf_cka(x, y, max_samples=100, seed=1)
    assert a == rbf_cka(x, y, max_samples=100, seed=1)
    assert a != rbf_cka(x, y, max_samples=100, seed=2)
    assert a == pytest.approx(rbf_cka(x, y), abs=0.1)
    assert rbf_cka(x, y, debiased=True) == pytest.approx(rbf_cka(y, x, debiased=True), abs=1e-12)


def _reference_gram_rbf(x: np.ndarray, threshold: float) -> np.ndarray:
    """``gram_rbf`` of Kornblith et al.'s demo (google-research ``representation_similarity``)."""
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = sq_norms[:, None] - 2 * dot_products + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)  # full n×n matrix, diagonal zeros included
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def _reference_center_gram(gram: np.ndarray) -> np.ndarray:
    means = np.mean(gram, 0, dtype=np.float64)
    means -= np.mean(means) / 2
    return gram - means[:, None] - means[None, :]


def _reference_cka(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    gx, gy = _reference_center_gram(gram_x), _reference_center_gram(gram_y)
    n = gx.shape[0]

    def hsic(a: np.ndarray, b: np.ndarray) -> float:  # biased HSIC, tr(KHLH)/(n-1)²
        return float(a.ravel() @ b.ravel()) / (n - 1) ** 2

    return hsic(gx, gy) / math.sqrt(hsic(gx, gx) * hsic(gy, gy))


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_rbf_cka_reproduces_kornblith_reference(threshold):
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    ref = _reference_cka(_reference_gram_rbf(x, threshold), _reference_gram_rbf(y, threshold))
    assert rbf_cka(x, y, sigma_frac=threshold) == pytest.approx(ref, abs=1e-10)
    assert rbf_cka(x, y, sigma_frac=threshold, median="reference") == pytest.approx(ref, abs=1e-10)
    assert cka_gram(gram_rbf(x, threshold), gram_rbf(y, threshold)) == pytest.approx(ref, abs=1e-10)
    old = rbf_cka(x, y, sigma_frac=threshold, median="distinct_pairs")
    assert abs(old - ref) > 1e-5


def test_rbf_cka_default_is_the_reference_default():
    np.random.seed(7)
    x = np.random.randn(80, 6)
    y = np.random.randn(80, 6) + x
    # the reference's ``gram_rbf(x, threshold=1.0)`` called without a threshold
    ref = _reference_cka(_reference_gram_rbf(x, 1.0), _reference_gram_rbf(y, 1.0))
    assert rbf_cka(x, y) == pytest.approx(ref, abs=1e-10)
    assert cka_gram(gram_rbf(x), gram_rbf(y)) == pytest.approx(ref, abs=1e-10)
    assert MEASURES.validate("rbf_cka", {})["sigma_frac"] == 1.0


def test_rbf_median_conventions():
    x, _ = related(n=101)  # odd n: n² is odd too, numpy's median is one entry
    xc = x - x.mean(0)
    sq = ((xc[:, None, :] - xc[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(len(x), 1)
    for median, med in (
        ("reference", np.median(sq)),
        ("distinct_pairs", np.sort(sq[iu])[(len(iu[0]) - 1) // 2]),  # torch's lower middle
    ):
        want = np.exp(-sq / (2 * 0.7**2 * med))
        got = gram_rbf(x, 0.7, median=median).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # duplicate rows: a zero median falls back to the median of the nonzero distances
    dup = np.repeat(x[:2], [100, 20], axis=0)  # most distances are 0, the others all equal
    for median in ("reference", "distinct_pairs"):
        g = gram_rbf(dup, 0.8, median=median).numpy()
        assert g.min() == pytest.approx(math.exp(-1 / (2 * 0.8**2)), rel=1e-12)
    with pytest.raises(ConfigError, match="median must be 'reference' or 'distinct_pairs'"):
        gram_rbf(x, median="mean")
    assert MEASURES.validate("rbf_cka", {})["median"] == "reference"
    assert MEASURES.validate("rbf_cka", {"median": "distinct_pairs"})["median"] == "distinct_pairs"
    with pytest.raises(ConfigError, match="'median'"):
        MEASURES.validate("rbf_cka", {"median": "mean"})


def test_cka_gram_checks_shapes():
    with pytest.raises(DataError, match="square"):
        cka_gram(np.ones((5, 3)), np.ones((5, 3)))


# --- dead units, constants, validation --------------------------------------------------------


@pytest.mark.parametrize("fn", ALL_CKA)
def test_dead_unit_changes_nothing(fn):
    x, y = related()
    xd = np.concatenate([x, np.full((x.shape[0], 1), 3.0)], 1)
    assert fn(xd, y) == pytest.approx(fn(x, y), abs=1e-10)


@pytest.mark.parametrize("fn", ALL_CKA)
def test_constant_input_gives_zero_not_nan(fn):
    x, _ = related()
    c = np.full((x.shape[0], 4), 2.5)
    assert fn(c, x) == 0.0
    assert fn(c, c) == 0.0


@pytest.mark.parametrize("fn", FEATURE_CKA)
def test_rounding_noise_of_a_constant_is_not_signal(fn):
    x, y = related(n=5000)
    c = ulp_noise(5000, 3)
    assert fn(c, y) == 0.0
    xt = torch.from_numpy(x).float()
    xd = torch.cat([xt, c], 1)
    assert fn(xd, y) == pytest.approx(fn(xt, y), abs=1e-9)


def test_validation_errors_name_the_problem():
    x, y = related(n=100)
    with pytest.raises(DataError, match="X has 100 rows but Y has 90"):
        linear_cka(x, y[:90])
    with pytest.raises(DataError, match="at least 2 rows"):
        linear_cka(x[:1], y[:1])
    with pytest.raises(DataError, match="at least 4 rows"):
        debiased_cka(x[:3], y[:3])
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(DataError, match="Y has 1 non-finite values.*row 7, column 2"):
        linear_cka(x, bad)
    with pytest.raises(DataError, match="2-d"):
        linear_cka(np.ones((4, 3, 2)), x[:4])
    with pytest.raises(DataError, match="no columns"):
        linear_cka(np.ones((4, 0)), x[:4])
    with pytest.raises(ConfigError, match="sigma_frac"):
        rbf_cka(x, y, sigma_frac=0.0)


def test_registry():
    assert MEASURES.names() == [
        "debiased_cka",
        "linear_cka",
        "mean_cca",
        "procrustes",
        "rbf_cka",
        "svcca",
    ]
    assert MEASURES.entry("linear_cka").fn is linear_cka
    assert is_similarity("linear_cka") and not is_similarity("procrustes")
    assert MEASURES.validate("rbf_cka", {"sigma_frac": "0.5"})["sigma_frac"] == 0.5
    with pytest.raises(ConfigError, match="sigma_frac"):
        MEASURES.validate("rbf_cka", {"sigma_frac": -1})
    with pytest.raises(ConfigError, match="has no argument 'bandwidth'"):
        MEASURES.validate("rbf_cka", {"bandwidth": 1})
    with pytest.raises(ConfigError, match="unknown measure"):
        MEASURES.entry("cosine")
    from richrep.plugins import registry_of

    assert registry_of("measures") is MEASURES
