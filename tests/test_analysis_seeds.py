"""compare_seeds: the seed-similarity summary on arrays, its checks, and a light import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from richrep.analysis import DEFAULT_MEASURES, MEASURES, compare_seeds, pairwise
from richrep.errors import ConfigError

KEYS = [
    "split",
    "n",
    "seeds",
    "members",
    "measures",
    "random_measures",
    "self",
    "matching",
    "sparse_prediction",
    "spectral",
    "permutation_test",
    "warnings",
]
HEAVY = (
    "richrep.training",
    "richrep.pipeline",
    "richrep.evaluation",
    "richrep.report",
    "richrep.stages",
    "richrep.store",
    "richrep.run",
    "richrep.config",
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These matrices are tiny: one thread avoids OpenMP overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seeds_like(k: int = 3, n: int = 80, d: int = 8, seed: int = 0) -> list[np.ndarray]:
    """K related but different "seeds": a shared signal, each with its own map and noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    return [np.tanh(z @ rng.normal(size=(4, d))) + 0.5 * rng.normal(size=(n, d)) for _ in range(k)]


NAMES = ["single-s0", "single-s1", "single-s2"]


def finite(x) -> bool:
    if isinstance(x, dict):
        return all(finite(v) for v in x.values())
    if isinstance(x, list):
        return all(finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


def test_compare_seeds_summary():
    trained, random = seeds_like(), seeds_like(seed=1)
    s = compare_seeds(
        trained,
        random,
        NAMES,
        n_permutations=5,
        n_clusters=2,
        seed=3,
        split="test",
        seeds=[0, 1, 2],
    )
    assert list(s) == KEYS
    assert finite(s)
    json.dumps(s, allow_nan=False)  # JSON-ready: plain lists, floats and ints
    assert (s["split"], s["n"], s["seeds"], s["members"]) == ("test", 80, [0, 1, 2], NAMES)
    assert list(s["measures"]) == list(DEFAULT_MEASURES) == list(s["random_measures"])
    assert s["self"]["linear_cka"] == pytest.approx(1.0, abs=1e-12)
    for name in DEFAULT_MEASURES:
        m = np.asarray(s["measures"][name])
        assert m.shape == (3, 3) and np.array_equal(m, m.T)
        assert np.allclose(m, pairwise(trained, name), atol=1e-12)
        assert np.allclose(s["random_measures"][name], pairwise(random, name), atol=1e-12)
        assert s["self"][name] == pytest.approx(MEASURES.entry(name).fn(trained[0], trained[0]))
    mt = s["matching"]
    assert mt["pair"] == NAMES[:2]
    assert list(mt) == ["pair", "one_to_one", "semi", "random_one_to_one"]
    assert len(mt["one_to_one"]) == len(mt["semi"]) == len(mt["random_one_to_one"]) == 8
    assert mt["one_to_one"] == sorted(mt["one_to_one"], reverse=True)
    sp = s["sparse_prediction"]
    assert len(sp["alphas"]) == len(sp["nse"]) == len(sp["nonzero"]) == 12
    assert s["spectral"]["n_clusters"] == 2 and sum(s["spectral"]["sizes"]) == 16
    pt = s["permutation_test"]
    assert pt["measure"] == "linear_cka" and pt["n_permutations"] == 5
    assert pt["observed"] == pytest.approx(s["measures"]["linear_cka"][0][1], abs=1e-12)
    assert 1 / 6 <= pt["p_value"] <= 1
    assert s["warnings"] == []
    assert s == compare_seeds(
        trained, random, NAMES, n_permutations=5, n_clusters=2, seed=3, split="test",
        seeds=[0, 1, 2],
    )  # fmt: skip


def test_compare_seeds_without_random_or_seeds():
    trained = [torch.from_numpy(t).float() for t in seeds_like(k=2)]
    s = compare_seeds(trained, None, NAMES[:2], measures=["linear_cka"], n_permutations=np.int64(3))
    json.dumps(s, allow_nan=False)  # numpy integers in the arguments are accepted, not stored
    assert list(s) == [k for k in KEYS if k != "seeds"]
    assert s["split"] == "" and s["random_measures"] == {}
    assert "random_one_to_one" not in s["matching"]
    assert list(s["measures"]) == ["linear_cka"] and finite(s)
    assert s["spectral"]["n_clusters"] == 4  # capped at half the 8 units


def test_identical_seeds_are_flagged():
    t = seeds_like(k=2)
    s = compare_seeds(
        [t[0], t[0].copy(), t[1]],
        None,
        NAMES,
        measures=["linear_cka"],
        n_permutations=2,
        checkpoint_sha256={"single-s0": "ab", "single-s2": "ab", "single-s1": "cd"},
    )
    assert s["warnings"] == [
        "single-s0 and single-s2 have byte-identical checkpoints: the seeds did not differ",
        "single-s0 and single-s1 have linear CKA 1.0000: (near-)identical representations",
    ]
    s = compare_seeds(t, None, NAMES[:2], measures=["mean_cca"], n_permutations=2)
    assert s["warnings"] == []  # the CKA check needs linear_cka among the measures


def test_argument_errors_are_config_errors():
    t = seeds_like(k=2)
    kw = {"measures": ["linear_cka"], "n_permutations": 2}
    with pytest.raises(ConfigError, match="at least two trained seeds"):
        compare_seeds(t[:1], None, NAMES[:1], **kw)
    with pytest.raises(ConfigError, match=r"trained\[1\] has 70 rows .* trained\[0\] has 80"):
        compare_seeds([t[0], t[1][:70]], None, NAMES[:2], **kw)
    with pytest.raises(ConfigError, match=r"random\[0\] has 79 rows"):
        compare_seeds(t, [t[0][:79], t[1]], NAMES[:2], **kw)
    with pytest.raises(ConfigError, match="untrained encoders of the same 2 seeds"):
        compare_seeds(t, t[:1], NAMES[:2], **kw)
    with pytest.raises(ConfigError, match="n_permutations must be >= 1; got 0"):
        compare_seeds(t, None, NAMES[:2], measures=["linear_cka"], n_permutations=0)
    with pytest.raises(ConfigError, match="n_clusters must be >= 2; got 1"):
        compare_seeds(t, None, NAMES[:2], n_clusters=1, **kw)
    with pytest.raises(
        ConfigError, match="unknown measure 'linear_ckaa' .*did you mean 'linear_cka'"
    ):
        compare_seeds(t, None, NAMES[:2], measures=["linear_ckaa"])
    with pytest.raises(ConfigError, match="sequence of measure names"):
        compare_seeds(t, None, NAMES[:2], measures="linear_cka")
    with pytest.raises(ConfigError, match="one name per trained seed"):
        compare_seeds(t, None, NAMES, **kw)
    with pytest.raises(ConfigError, match="names must be distinct"):
        compare_seeds(t, None, ["a", "a"], **kw)
    with pytest.raises(ConfigError, match="one seed per trained seed"):
        compare_seeds(t, None, NAMES[:2], seeds=[0], **kw)
    with pytest.raises(ConfigError, match=r"checkpoint_sha256 names \['single-s9'\]"):
        compare_seeds(t, None, NAMES[:2], checkpoint_sha256={"single-s9": "ab"}, **kw)
    with pytest.raises(ConfigError, match="at least 4 samples"):
        compare_seeds([x[:3] for x in t], None, NAMES[:2], **kw)
    with pytest.raises(ConfigError, match="at least 2 units"):
        compare_seeds([x[:, :1] for x in t], None, NAMES[:2], **kw)


def _imported(code: str) -> subprocess.CompletedProcess[str]:
    check = f"bad = [m for m in sys.modules if m.startswith({HEAVY!r})]; print(bad); assert not bad"
    return subprocess.run(
        [sys.executable, "-c", code + "; " + check], capture_output=True, text=True, timeout=120
    )


def test_analysis_package_loads_no_pipeline_code():
    """The analysis modules themselves (``richrep/__init__.py`` bypassed) import no pipeline."""
    stub = (
        "import sys, types, importlib.util; "
        "spec = importlib.util.find_spec('richrep'); "
        "pkg = types.ModuleType('richrep'); "
        "pkg.__path__ = list(spec.submodule_search_locations); "
        "sys.modules['richrep'] = pkg; "
        "import richrep.analysis"
    )
    r = _imported(stub)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_richrep_analysis_loads_no_pipeline_code():
    """``import richrep.analysis`` in a fresh interpreter loads no training, pipeline,
    evaluation, report, stage, store or config code (needs a lazy ``richrep/__init__.py``)."""
    r = _imported("import sys, richrep.analysis")
    assert r.returncode == 0, r.stdout + r.stderr
