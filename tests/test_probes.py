"""Linear and nearest-mean probes: agreement with scikit-learn, validation-only C selection,
warm starts, labels, constant features, input errors, scikit-learn API conformance; fit leaves
process-wide torch settings alone, and the explicit CPU policy restores them."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from richrep.errors import ConfigError, DataError
from richrep.evaluation import probes
from richrep.evaluation.inputs import stratified_val_split
from richrep.evaluation.probes import LinearProbe, NearestMeanProbe
from richrep.runtime import cpu_policy
from richrep.runtime.cpu_policy import probe_compute_policy

GRID = (1e-3, 1e-2, 0.1, 1.0)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """sklearn digits (1,797 x 64, 10 classes; several pixels constant), split 1000/300/497."""
    X, y = load_digits(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    X, y = X[order].astype(np.float32), y[order]
    return {
        "X": X[:1000],
        "y": y[:1000],
        "Xv": X[1000:1300],
        "yv": y[1000:1300],
        "Xt": X[1300:],
        "yt": y[1300:],
    }


def sk_fit(X: np.ndarray, y: np.ndarray, C: float, **kw) -> object:
    lr = LogisticRegression(C=C, max_iter=10_000, tol=1e-8, **kw)
    return make_pipeline(StandardScaler(), lr).fit(X, y)


def test_single_C_solves_sklearns_objective(digits):
    """Same objective as StandardScaler + LogisticRegression: same probabilities."""
    C = 0.1
    probe = LinearProbe(Cs=C, tol=1e-6, max_iter=1000, device="cpu").fit(digits["X"], digits["y"])
    ref = sk_fit(digits["X"], digits["y"], C)
    np.testing.assert_allclose(
        probe.predict_proba(digits["Xt"]), ref.predict_proba(digits["Xt"]), atol=2e-3
    )
    assert probe.C_ == C and np.isnan(probe.scores_).all()
    # coef_ lives in the original feature space: decision_function is an affine map of X
    Z = digits["Xt"].astype(np.float64) @ probe.coef_.T + probe.intercept_
    np.testing.assert_allclose(probe.decision_function(digits["Xt"]), Z, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_grid_accuracy_matches_sklearn_within_half_a_point(digits):
    """The validation-chosen, refit probe against scikit-learn doing the same by hand."""
    probe = LinearProbe(Cs=GRID, device="cpu").fit(
        digits["X"], digits["y"], digits["Xv"], digits["yv"]
    )
    val = [sk_fit(digits["X"], digits["y"], C).score(digits["Xv"], digits["yv"]) for C in GRID]
    C = GRID[int(np.argmax(val))]
    ref = sk_fit(
        np.concatenate([digits["X"], digits["Xv"]]), np.concatenate([digits["y"], digits["yv"]]), C
    )
    np.testing.assert_allclose(probe.scores_, val, atol=2 / 300)  # at most 2 examples differ
    assert probe.Cs_[np.argmax(probe.scores_)] == probe.C_  # first maximum: the strongest
    ours, theirs = probe.score(digits["Xt"], digits["yt"]), ref.score(digits["Xt"], digits["yt"])
    assert abs(ours - theirs) <= 0.005


def test_binary_equals_sklearn_at_twice_C(digits):
    """Two classes: the multinomial model with C is scikit-learn's binary model with 2C."""
    keep = np.isin(digits["y"], [3, 8])
    X, y = digits["X"][keep], digits["y"][keep]
    probe = LinearProbe(Cs=0.05, tol=1e-7, max_iter=1000, device="cpu").fit(X, y)
    ref = sk_fit(X, y, 0.1)
    assert probe.decision_function(X).shape == (len(y),)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X), atol=2e-3)
    np.testing.assert_array_equal(probe.classes_, [3, 8])


def adversarial_val(digits, C_lo: float, C_hi: float):
    """Validation examples on which the models of C_lo and C_hi disagree, labelled either way."""
    kw = {"device": "cpu", "tol": 1e-6, "max_iter": 1000}
    lo = LinearProbe(Cs=C_lo, **kw).fit(digits["X"], digits["y"])
    hi = LinearProbe(Cs=C_hi, **kw).fit(digits["X"], digits["y"])
    Xv = np.concatenate([digits["Xv"], digits["Xt"]])
    differ = lo.predict(Xv) != hi.predict(Xv)
    assert differ.sum() >= 5
    return Xv[differ], lo.predict(Xv[differ]), hi.predict(Xv[differ])


@pytest.mark.slow
def test_C_is_chosen_on_the_validation_data_only(digits):
    Xv, y_lo, y_hi = adversarial_val(digits, 1e-3, 1.0)
    kw = {"Cs": (1e-3, 1.0), "device": "cpu", "refit": False, "tol": 1e-6, "max_iter": 1000}
    p_lo = LinearProbe(**kw).fit(digits["X"], digits["y"], Xv, y_lo)
    p_hi = LinearProbe(**kw).fit(digits["X"], digits["y"], Xv, y_hi)
    assert p_lo.C_ == 1e-3 and p_lo.scores_[0] == 1.0 and p_lo.scores_[1] == 0.0
    assert p_hi.C_ == 1.0 and p_hi.scores_[1] == 1.0 and p_hi.scores_[0] == 0.0
    # without refit, validation data enter only through the choice of C: the model is the one
    # of that C trained on X alone
    alone = LinearProbe(Cs=1.0, device="cpu", tol=1e-6, max_iter=1000).fit(digits["X"], digits["y"])
    np.testing.assert_allclose(
        alone.predict_proba(digits["Xt"]), p_hi.predict_proba(digits["Xt"]), atol=1e-3
    )
    # data never passed to fit change nothing: fitting again gives a bit-identical model
    again = LinearProbe(**kw).fit(digits["X"], digits["y"], Xv, y_hi)
    np.testing.assert_array_equal(again.coef_, p_hi.coef_)


def test_warm_started_grid_matches_cold_start(digits):
    """Solving the grid from strong to weak with warm starts reaches the cold-start solution."""
    Xv, _, y_hi = adversarial_val(digits, 1e-3, 1.0)
    grid = LinearProbe(
        Cs=(1e-3, 1e-2, 0.1, 1.0), tol=1e-7, max_iter=1000, refit=False, device="cpu"
    ).fit(digits["X"], digits["y"], Xv, y_hi)
    assert grid.C_ == 1.0  # the last value: reached through three warm starts
    cold = LinearProbe(Cs=1.0, tol=1e-7, max_iter=1000, device="cpu").fit(digits["X"], digits["y"])
    np.testing.assert_allclose(
        grid.predict_proba(digits["Xt"]), cold.predict_proba(digits["Xt"]), atol=1e-3
    )
    assert grid.n_iter_[-1] == 0  # no refit
    assert (grid.n_iter_[:-1] >= 1).all()


def test_warm_starts_save_iterations(digits):
    grid = (1e-3, 1e-2, 0.1, 1.0)
    kw = {"device": "cpu", "max_iter": 1000}
    warm = LinearProbe(Cs=grid, refit=False, **kw).fit(
        digits["X"], digits["y"], digits["Xv"], digits["yv"]
    )
    cold = [LinearProbe(Cs=C, **kw).fit(digits["X"], digits["y"]).n_iter_[0] for C in grid]
    assert warm.n_iter_[0] == cold[0]  # the first value starts from zero either way
    assert warm.n_iter_[:-1].sum() < 0.8 * sum(cold)  # measured 40 vs 69


def test_carved_validation_split_is_stratified_and_tiny_data_work(digits):
    X, y = digits["X"], digits["y"]
    rows = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])  # 10 per class
    probe = LinearProbe(device="cpu").fit(X[rows], y[rows])
    assert probe.C_ in probe.Cs_ and np.all((probe.scores_ >= 0) & (probe.scores_ <= 1))
    assert probe.scores_.max() >= 0.5
    np.testing.assert_allclose(probe.scores_ * 20, np.round(probe.scores_ * 20))  # 2 per class
    # two examples per class: one of each is held out, none is lost
    two = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        probe = LinearProbe(device="cpu").fit(X[two], y[two])
    np.testing.assert_allclose(probe.scores_ * 10, np.round(probe.scores_ * 10))
    # a class with a single example stays in training and is still predicted
    one = np.concatenate([rows[y[rows] != 7], np.flatnonzero(y == 7)[:1]])
    probe = LinearProbe(device="cpu").fit(X[one], y[one])
    assert 7 in probe.classes_
    # nothing to hold out at all: warn and use the value closest to C = 1
    single = np.array([np.flatnonzero(y == c)[0] for c in range(10)])
    with pytest.warns(UserWarning, match="no class has two examples"):
        probe = LinearProbe(device="cpu").fit(X[single], y[single])
    assert probe.C_ == 1.0
    assert probe.score(X[single], y[single]) == 1.0


@pytest.mark.parametrize("labels", [["cat", "dog", "emu"], [-5, 3, 100]])
def test_arbitrary_label_values(digits, labels):
    keep = digits["y"] < 3
    X, y = digits["X"][keep], digits["y"][keep]
    y_named = np.asarray(labels)[y]
    named = LinearProbe(Cs=0.1, device="cpu").fit(X, y_named)
    plain = LinearProbe(Cs=0.1, device="cpu").fit(X, y)
    np.testing.assert_array_equal(named.classes_, np.sort(np.asarray(labels)))
    np.testing.assert_array_equal(named.predict(X), np.asarray(labels)[plain.predict(X)])
    assert named.score(X, y_named) == plain.score(X, y) > 0.95


def test_constant_features_get_zero_weight(digits):
    X = digits["X"]
    extra = np.hstack([X, np.full((len(X), 1), 7.0, np.float32), np.zeros((len(X), 1), np.float32)])
    a = LinearProbe(Cs=0.1, tol=1e-6, device="cpu").fit(X, digits["y"])
    b = LinearProbe(Cs=0.1, tol=1e-6, device="cpu").fit(extra, digits["y"])
    assert np.all(b.coef_[:, -2:] == 0) and b.scale_[-2] == 1.0 and b.mean_[-2] == 7.0
    np.testing.assert_allclose(b.coef_[:, :-2], a.coef_, atol=1e-6)
    const = np.hstack([digits["Xt"], np.full((len(digits["Xt"]), 2), -3.0, np.float32)])
    np.testing.assert_array_equal(b.predict(const), a.predict(digits["Xt"]))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_non_finite_features_raise_a_clear_error(digits, bad, as_tensor):
    X = digits["X"].copy()
    X[3, 5] = bad
    X = torch.from_numpy(X) if as_tensor else X
    with pytest.raises(DataError, match=r"NaN or inf value\(s\) \(first at row 3, column 5\)"):
        LinearProbe(device="cpu").fit(X, digits["y"])
    fitted = LinearProbe(Cs=0.1, device="cpu").fit(digits["Xt"], digits["yt"])
    with pytest.raises(DataError, match="NaN or inf"):
        fitted.predict(X)


def test_other_input_errors(digits):
    X, y = digits["X"], digits["y"]
    for features in (X, torch.from_numpy(X)):
        with pytest.raises(DataError, match="1000 rows but y has 999 labels"):
            LinearProbe(device="cpu").fit(features, y[:-1])
    with pytest.raises(DataError, match="only one class"):
        LinearProbe(device="cpu").fit(X, np.zeros(len(y)))
    with pytest.raises(DataError, match="both X_val and y_val"):
        LinearProbe(device="cpu").fit(X, y, X_val=X)
    with pytest.raises(DataError, match="absent from y"):
        LinearProbe(device="cpu").fit(X, y, X, y + 100)
    with pytest.raises(ValueError, match="Unknown label type"):
        LinearProbe(device="cpu").fit(X, y + 0.5)


@pytest.mark.parametrize(
    ("probe", "match"),
    [
        (LinearProbe(Cs=-1.0), r"LinearProbe argument 'Cs'=-1\.0 is invalid"),
        (LinearProbe(Cs=[]), r"'Cs'=\[\] is invalid"),
        (LinearProbe(Cs=[0.1, float("nan")]), r"'Cs'.*finite number"),
        (LinearProbe(dtype="float16"), r"'dtype'='float16' is invalid"),
        (LinearProbe(val_fraction=0.0), r"'val_fraction'=0\.0 is invalid"),
        (LinearProbe(max_iter=0), r"'max_iter'=0 is invalid"),
        (LinearProbe(tol=-1.0), r"'tol'=-1\.0 is invalid"),
        (LinearProbe(device="gpu"), r"'device'='gpu' is invalid"),
        (NearestMeanProbe(metric="l1"), r"NearestMeanProbe argument 'metric'='l1' is invalid"),
    ],
)
def test_bad_arguments_fail_at_fit_with_the_registry_constraints(digits, probe, match):
    """A probe built in Python is held to the constraints its annotations carry (those the
    registry checks when an experiment is read), before any work."""
    with pytest.raises(ConfigError, match=match):
        probe.fit(digits["X"], digits["y"])


def test_torch_and_numpy_inputs_agree(digits):
    a = LinearProbe(Cs=(0.01, 0.1), device="cpu").fit(digits["X"], digits["y"])
    b = LinearProbe(Cs=(0.01, 0.1), device="cpu").fit(
        torch.from_numpy(digits["X"]), torch.from_numpy(digits["y"])
    )
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-6, atol=1e-8)
    assert b.score(torch.from_numpy(digits["Xt"]), torch.from_numpy(digits["yt"])) == a.score(
        digits["Xt"], digits["yt"]
    )


def test_float64_solver_agrees_with_float32(digits):
    kw = {"Cs": 0.1, "tol": 1e-6, "max_iter": 1000, "device": "cpu"}
    a = LinearProbe(dtype="float32", **kw).fit(digits["X"], digits["y"])
    b = LinearProbe(dtype="float64", **kw).fit(digits["X"], digits["y"])
    np.testing.assert_allclose(
        a.predict_proba(digits["Xt"]), b.predict_proba(digits["Xt"]), atol=1e-3
    )


def test_nearest_mean_probe_by_hand():
    X = np.array([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0], [2.0, 1.0], [2.0, 1.0]])
    y = np.array(["a", "a", "b", "b", "c", "c"])
    # standardization uses all 6 points: mean (2, 1), std (16/6)**.5, (4/6)**.5
    sd = np.sqrt([16 / 6, 4 / 6])
    for metric in ("euclidean", "cosine"):
        p = NearestMeanProbe(metric=metric, device="cpu").fit(X, y)
        np.testing.assert_allclose(p.mean_, [2.0, 1.0])
        np.testing.assert_allclose(p.scale_, sd)
        np.testing.assert_allclose(p.centroids_, [[-2 / sd[0], 0], [2 / sd[0], 0], [0, 0]])
    # a point at standardized (3, 5): euclidean picks b (c, the origin, is at 9 + 25 = 34, b at
    # (3 - 1.22)^2 + 25 = 28.2); cosine picks b too (a has a negative cosine, c's is 0)
    q = np.array([[2 + 3 * sd[0], 1 + 5 * sd[1]]])
    assert NearestMeanProbe(metric="euclidean").fit(X, y).predict(q)[0] == "b"
    # near the origin euclidean picks c, while cosine only looks at the direction: a
    q = np.array([[2 - 0.1 * sd[0], 1.0]])
    assert NearestMeanProbe(metric="euclidean").fit(X, y).predict(q)[0] == "c"
    assert NearestMeanProbe(metric="cosine").fit(X, y).predict(q)[0] == "a"


def test_clone_and_params():
    p = LinearProbe(Cs=(0.1, 1.0), max_iter=7, device="cpu", dtype="float64")
    q = clone(p)
    assert q.get_params() == p.get_params() and q is not p
    assert q.set_params(tol=1e-3).tol == 1e-3
    X, y = load_digits(return_X_y=True)
    fitted = LinearProbe(Cs=0.1, device="cpu").fit(X[:300], y[:300])
    fresh = clone(fitted)
    assert not hasattr(fresh, "coef_") and fresh.get_params() == fitted.get_params()
    assert clone(NearestMeanProbe(metric="euclidean")).get_params()["metric"] == "euclidean"


@pytest.mark.slow
def test_sklearn_estimator_checks():
    """scikit-learn's own API checks (all of them pass; the run is kept short on purpose)."""
    from sklearn.utils.estimator_checks import check_estimator

    for est in (LinearProbe(device="cpu"), NearestMeanProbe(device="cpu")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            failures = check_estimator(est, on_fail=None)
        failed = [r for r in failures if r["status"] == "failed"]
        assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]


# ------------------------------------------------------------------------------------------------
# Process-wide settings: fit changes none; the explicit policy changes and restores them


def _oneDNN_precision() -> str | None:
    return getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", None)


def _settings() -> tuple[int, str, str | None]:
    return torch.get_num_threads(), torch.get_float32_matmul_precision(), _oneDNN_precision()


@pytest.fixture
def two_threads():
    """Two torch threads for the test (so a drop to one is visible), the caller's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_fit_changes_no_process_wide_setting(digits, monkeypatch, two_threads):
    """Neither after fit nor during the solve (where other threads could see it) do torch's
    thread count or float32 matmul precision differ from the caller's."""
    during = []
    real = probes.solve_path

    def spy(*args, **kwargs):
        during.append((torch.get_num_threads(), _oneDNN_precision()))
        return real(*args, **kwargs)

    monkeypatch.setattr(probes, "solve_path", spy)
    start = _settings()
    X, y = digits["X"][:300], digits["y"][:300]  # small: the old fit dropped to one thread
    for probe in (
        LinearProbe(Cs=(0.01, 0.1), device="cpu"),
        LinearProbe(Cs=0.1, dtype="float64", device="cpu"),
        NearestMeanProbe(device="cpu"),
    ):
        probe.fit(torch.from_numpy(X), y)
        assert _settings() == start
    assert during == [(2, start[2])] * 2


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("fast_ok", [False, True])
def test_compute_policy_applies_then_restores(monkeypatch, two_threads, fail, fast_ok):
    """A small float32 CPU solve: one thread, bf16 fpmath matmuls if the accuracy check passed
    (forced either way here); everything restored on exit, also when the block raises."""
    monkeypatch.setattr(cpu_policy, "_FAST_MATMUL_OK", fast_ok)
    start = _settings()
    raises = pytest.raises(RuntimeError, match="boom") if fail else contextlib.nullcontext()
    with raises, probe_compute_policy(1000, "cpu", "float32") as policy:
        assert policy.threads == torch.get_num_threads() == 1
        assert policy.fast_matmul is fast_ok
        assert (_oneDNN_precision() == "bf16") is fast_ok
        if fail:
            raise RuntimeError("boom")
    assert _settings() == start


@pytest.mark.parametrize(
    ("size", "device", "dtype", "threads", "fast"),
    [
        (cpu_policy.SMALL_PROBLEM + 1, "cpu", "float32", 2, True),  # large: all threads
        (1000, "cpu", torch.float64, 1, False),  # float64: matmul precision untouched
        (1000, "cuda", "float32", 2, False),  # a GPU solve: nothing changes
    ],
)
def test_compute_policy_changes_only_what_applies(
    monkeypatch, two_threads, size, device, dtype, threads, fast
):
    monkeypatch.setattr(cpu_policy, "_FAST_MATMUL_OK", True)
    start = _settings()
    with probe_compute_policy(size, device, dtype) as policy:
        assert (policy.threads, policy.fast_matmul) == (threads, fast)
        assert torch.get_num_threads() == threads
        assert (_oneDNN_precision() == "bf16") is fast
    assert _settings() == start


def test_fit_inside_the_policy(digits, two_threads):
    """The stage's way to run a probe: same model, and solver_stats_ records the fpmath mode."""
    X, y = digits["X"][:500], digits["y"][:500]
    kw = {"Cs": 0.1, "tol": 1e-6, "max_iter": 1000, "device": "cpu"}
    plain = LinearProbe(**kw).fit(X, y)
    start = _settings()
    with probe_compute_policy(X.size, "cpu", "float32") as policy:
        tuned = LinearProbe(**kw).fit(X, y)
    assert _settings() == start
    assert plain.solver_stats_["fast_matmul"] is False
    assert tuned.solver_stats_["fast_matmul"] is policy.fast_matmul
    np.testing.assert_allclose(
        tuned.predict_proba(digits["Xt"]), plain.predict_proba(digits["Xt"]), atol=1e-3
    )


def test_validation_split_keeps_a_single_example_class_in_training():
    """Why the probe has its own split: even when most of a class is held out, a class's last
    example is never (richrep.data.splits.stratified_split would hold it out here)."""
    y = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    train, val = stratified_val_split(y, 0.9, seed=0)
    assert 5 in train and 5 not in val
    assert (y[val] == 0).sum() == 4 and (y[val] == 2).sum() == 1 and (y[train] == 2).sum() == 1
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(y.size))
    again = stratified_val_split(y, 0.9, seed=0)
    np.testing.assert_array_equal(again[1], val)
