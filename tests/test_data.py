"""Loaders: real Fashion-MNIST files, corrupt/missing files, MNIST-1D, .npz arrays, splits."""

from __future__ import annotations

import gzip
import pickle
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from richrep.data import fashion_mnist as fm
from richrep.data import load_task
from richrep.data.splits import per_class_sample, stratified_split
from richrep.errors import ConfigError, DataError


def test_fashion_mnist_real_files(fashion):
    t = fashion
    assert t.input_shape == (1, 28, 28) and t.kind == "image" and t.num_classes == 10
    assert len(t.train) + len(t.val) == 60_000 and len(t.test) == 10_000
    assert np.bincount(t.test.y.numpy()).tolist() == [1000] * 10
    assert np.bincount(torch.cat([t.train.y, t.val.y]).numpy()).tolist() == [6000] * 10
    assert np.bincount(t.val.y.numpy()).tolist() == [600] * 10  # stratified 10%
    pool = torch.cat([t.train.x, t.val.x])
    assert abs(float(pool.mean()) - 0.2860) < 1e-3 and abs(float(pool.std()) - 0.3530) < 1e-3
    assert float(pool.min()) == 0.0 and float(pool.max()) == 1.0
    assert t.class_names[9] == "Ankle boot"


def _private_copy(tmp_path: Path, monkeypatch) -> Path:
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for name in fm.FILES:
        shutil.copy(fm.SYSTEM_DIR / f"{name}.gz", d / f"{name}.gz")
    monkeypatch.setenv("RICHREP_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    fm._load.cache_clear()
    return d


def test_truncated_gzip_is_reported(tmp_path, monkeypatch):
    d = _private_copy(tmp_path, monkeypatch)
    f = d / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_task("fashion_mnist", {"download": False})


def test_modified_content_fails_checksum(tmp_path, monkeypatch):
    d = _private_copy(tmp_path, monkeypatch)
    f = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    f.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="checksum"):
        load_task("fashion_mnist", {"download": False})


def test_missing_and_offline_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RICHREP_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        load_task("fashion_mnist")
    assert "download failed" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.gz"))  # nothing half-written left behind


def test_download_is_checked_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RICHREP_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = fm.SYSTEM_DIR
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    fm._load.cache_clear()
    served = []

    class Response:
        def __init__(self, data: bytes):
            self.data = data

        def read(self):
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_urlopen(url, timeout=0):
        name = url.rsplit("/", 1)[1]
        served.append(name)
        data = (real / name).read_bytes()
        if name.startswith("t10k-labels"):  # a corrupted download must be rejected
            data = gzip.compress(gzip.decompress(data)[:-5])
        return Response(data)

    monkeypatch.setattr(fm.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="checksum"):
        load_task("fashion_mnist")
    cached = sorted(p.name for p in (tmp_path / "cache" / "richrep" / "fashion-mnist").iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in cached and not any(
        p.endswith(".part") for p in cached
    )
    assert served[0].startswith("train-images")


def test_idx_header_mismatch(tmp_path):
    f = tmp_path / "x-idx1-ubyte"
    f.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(5))
    with pytest.raises(DataError, match="truncated"):
        fm.read_idx(f)


def test_mnist1d_is_deterministic_and_isolated():
    state = np.random.get_state()[1].copy()
    a = load_task("mnist1d", {"num_samples": 600})
    b = load_task("mnist1d", {"num_samples": 600})
    assert np.array_equal(np.random.get_state()[1], state)  # global RNG untouched
    assert torch.equal(a.train.x, b.train.x) and a.hash == b.hash
    assert a.input_shape == (1, 40) and a.kind == "signal" and len(a.test) == 120
    c = load_task("mnist1d", {"num_samples": 600, "seed": 1})
    assert c.hash != a.hash


def test_splits_depend_on_seed_only():
    a = load_task("mnist1d", {"num_samples": 600}, seed=0)
    b = load_task("mnist1d", {"num_samples": 600}, seed=1)
    assert not torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.test.x, b.test.x)  # the test set never moves
    keep, held = stratified_split(np.repeat(np.arange(3), 10), 0.2, 0)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 30
    assert np.bincount(np.repeat(np.arange(3), 10)[held]).tolist() == [2, 2, 2]
    idx = per_class_sample(np.repeat(np.arange(3), 10), 4, 0)
    assert np.bincount(np.repeat(np.arange(3), 10)[idx]).tolist() == [4, 4, 4]


def test_max_train_per_class():
    t = load_task("mnist1d", {"num_samples": 1000}, max_train_per_class=7)
    assert np.bincount(t.train.y.numpy()).tolist() == [7] * 10


def test_npz_round_trip_and_groups(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = np.arange(200) % 4
    p = tmp_path / "mine.npz"
    np.savez(p, x=x, y=y, groups=y % 2)
    t = load_task("npz", {"path": str(p)})
    assert t.kind == "vector" and t.num_classes == 4 and t.train.groups is not None
    assert len(t.train) + len(t.val) + len(t.test) == 200


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((10, 3))}, r"lacks array\(s\) \['y'\]"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, "shape"),
        ({"x": np.full((10, 3), np.nan), "y": np.arange(10) % 2}, "NaN"),
        ({"x": np.zeros((10, 3)), "y": np.arange(10) - 1}, "non-negative"),
        ({"x": np.zeros((10, 3)), "y": np.linspace(0, 1, 10)}, "integers"),
        (
            {"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "x_test": np.zeros((2, 3))},
            "both x_test and y_test",
        ),
    ],
)
def test_npz_bad_input(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match):
        load_task("npz", {"path": str(p)})


def test_npz_missing_or_garbage(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task("npz", {"path": str(tmp_path / "nope.npz")})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_task("npz", {"path": str(tmp_path / "junk.npz")})


def test_digits_resized():
    t = load_task("digits", {"size": 28})
    assert (
        t.input_shape == (1, 28, 28)
        and float(t.train.x.min()) >= 0.0
        and float(t.train.x.max()) <= 1.0
    )


# --- npz: dtypes, scaling, file problems, labels, the test split -----------------------------


def _npz(tmp_path: Path, name: str = "d.npz", **arrays) -> str:
    p = tmp_path / name
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float64]
)
def test_npz_accepts_every_real_dtype(tmp_path, dtype):
    x = np.arange(120 * 4).reshape(120, 4) % 2 if dtype is np.bool_ else np.arange(120 * 4)
    x = x.reshape(120, 4).astype(dtype)
    t = load_task("npz", {"path": _npz(tmp_path, x=x, y=np.arange(120) % 3)})
    assert t.train.x.dtype == torch.float32 and t.recipe["info"]["dtype"] == np.dtype(dtype).name
    pool = torch.cat([t.train.x, t.val.x, t.test.x])
    want = x.astype(np.float64) / (255 if dtype is np.uint8 else 1)
    assert np.allclose(np.sort(pool.numpy().ravel()), np.sort(want.ravel().astype(np.float32)))
    assert t.recipe["info"]["scaled"] == ("uint8/255" if dtype is np.uint8 else "none")


def test_npz_scale_argument(tmp_path):
    x = np.tile(np.arange(256, dtype=np.uint8), (40, 1))
    p = _npz(tmp_path, x=x, y=np.arange(40) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    auto = load_task("npz", {"path": p})
    assert float(auto.test.x.max()) == 1.0 and float(auto.test.x.min()) == 0.0
    none = load_task("npz", {"path": p, "scale": "none"})
    assert float(none.test.x.max()) == 255.0 and none.recipe["info"]["scaled"] == "none"
    by = load_task("npz", {"path": p, "scale": 2})
    assert float(by.test.x.max()) == 127.5 and by.recipe["info"]["scaled"] == "uint8/2"
    for bad in ("uint9", -1, 0):
        with pytest.raises(ConfigError, match="scale"):
            load_task("npz", {"path": p, "scale": bad})
    mixed = _npz(
        tmp_path, "m.npz", x=x, y=np.arange(40) % 2, x_test=x[:4] / 255.0, y_test=[0, 1] * 2
    )
    with pytest.warns(UserWarning, match="x is uint8 but x_test is float64"):
        load_task("npz", {"path": mixed})


def test_npz_rejects_bad_inputs_and_kinds(tmp_path):
    y = np.arange(10) % 2
    with pytest.raises(DataError, match="kind='image' needs x of 4 dimensions"):
        load_task("npz", {"path": _npz(tmp_path, x=np.zeros((10, 3)), y=y), "kind": "image"})
    with pytest.raises(DataError, match="real numbers"):
        load_task("npz", {"path": _npz(tmp_path, x=np.ones((10, 2), complex), y=y)})
    with pytest.raises(DataError, match="real numbers"):
        load_task("npz", {"path": _npz(tmp_path, x=np.full((10, 2), "a"), y=y)})
    with pytest.raises(DataError, match="float32 range"):
        load_task("npz", {"path": _npz(tmp_path, x=np.full((10, 2), 1e300), y=y)})


def test_value_range_warning():
    from richrep.data.checks import value_range_warning, value_stats

    g = torch.Generator().manual_seed(0)
    source = torch.rand(500, 1, 8, 8, generator=g)
    stats = value_stats(source)
    assert abs(stats.mean - 0.5) < 0.05 and stats.max_abs <= 1.0
    same = torch.rand(200, 1, 8, 8, generator=g)
    assert value_range_warning(stats, same, "target") is None
    assert value_range_warning(stats, 1 - same, "inverted") is None
    msg = value_range_warning(stats, same * 255, "pixels")
    assert msg is not None and msg.startswith("pixels:") and "255" in msg
    assert value_range_warning(value_stats(source * 255), same, "small") is not None
    assert value_range_warning(stats, same + 5, "offset") is not None  # 5 / 0.29 stds away
    assert value_range_warning(stats, np.asarray(same.numpy() * 255, np.uint8), "u8") is not None


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, int)}, "x holds 0 examples"),
        ({"x": np.float32(1.0), "y": np.zeros(1, int)}, r"x must have shape \(N, features"),
        ({"x": np.zeros(10), "y": np.zeros(10, int)}, r"x\[:, None\]"),
        (
            {"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "groups": np.zeros(7, int)},
            r"groups must have shape \(10,\)",
        ),
        (
            {
                "x": np.zeros((10, 3)),
                "y": np.arange(10) % 2,
                "x_test": np.zeros((4, 3)),
                "y_test": np.arange(4) % 2,
                "groups_test": np.zeros(3, int),
            },
            r"groups_test must have shape \(4,\)",
        ),
        (
            {"x": np.zeros((10, 3)), "y": np.array([0, 1, np.nan, 1, 0, np.nan, 0, 1, 0, 1])},
            r"2 of 10 labels \(y\) are NaN",
        ),
        (
            {"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "groups_test": np.zeros(3, int)},
            "groups_test without x_test",
        ),
        ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2 * 1000}, r"0\.\.C-1.*np\.unique"),
        ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2 * 2**40}, "remap"),
        ({"x": np.zeros((10, 3)), "y": np.full(10, 2**63, np.uint64)}, "remap"),
    ],
)
def test_npz_bad_arrays_are_named(tmp_path, arrays, match):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_task("npz", {"path": p})
    assert p in str(e.value)


def test_npz_wrong_kinds_of_file(tmp_path):
    npy = tmp_path / "a.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros((10, 3)))
    cases = {
        npy: r"\.npy file, not a \.npz archive; save with np\.savez\(path, x=",
        tmp_path / "t.npz": r"not a readable \.npz file \(not a zip archive\)",
        tmp_path / "e.npz": r"not a readable \.npz file \(empty\)",
        tmp_path / "p.npz": "pickled Python objects.*refuses to load for safety",
        tmp_path / "o.npz": "pickled Python objects.*refuses to load for safety",
        tmp_path / "z.npz": r"not a readable \.npz",
        tmp_path / "c.npz": r"not a readable \.npz",
    }
    (tmp_path / "t.npz").write_text("1,2,3\n4,5,6\n")
    (tmp_path / "e.npz").write_bytes(b"")
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": [1, 2]}))
    np.savez(tmp_path / "o.npz", x=np.array([1, "a"], dtype=object), y=np.arange(2))
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("x.csv", "1,2\n")
    good = Path(_npz(tmp_path, x=np.zeros((10, 3)), y=np.arange(10) % 2))
    (tmp_path / "c.npz").write_bytes(good.read_bytes()[:300])
    for path, match in cases.items():
        with pytest.raises(DataError, match=match) as e:
            load_task("npz", {"path": str(path)})
        assert "allow_pickle" not in str(e.value) and str(path) in str(e.value)


def test_sparse_labels_become_classes(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 3))
    y = np.array([1, 3, 7])[np.arange(60) % 3]
    with pytest.warns(UserWarning, match=r"label ids \{1, 3, 7\} are not 0\.\.2"):
        t = load_task("npz", {"path": _npz(tmp_path, x=x, y=y)})
    assert t.num_classes == 3 and t.classes == (1, 3, 7) and t.class_names == ("1", "3", "7")
    assert sorted(set(t.test.y.tolist())) == [0, 1, 2]
    full = torch.cat([t.train.x, t.val.x, t.test.x])
    labels = torch.cat([t.train.y, t.val.y, t.test.y])
    for i, c in enumerate(t.classes):  # label i holds exactly the examples of original id c
        got = full[labels == i].double().numpy()
        assert sorted(map(tuple, got)) == sorted(map(tuple, x[y == c].astype(np.float32)))


def test_npz_test_split_follows_the_experiment_seed(tmp_path):
    from richrep.data import DATASETS

    rng = np.random.default_rng(0)
    p = _npz(tmp_path, x=rng.normal(size=(100, 4)), y=np.arange(100) % 4)
    a, b = load_task("npz", {"path": p}, seed=0), load_task("npz", {"path": p}, seed=1)
    assert not torch.equal(a.test.x, b.test.x)
    assert b.recipe["info"]["test_split"] == {"from": "x", "fraction": 0.2, "seed": 1}
    pinned = load_task("npz", {"path": p, "split_seed": 0}, seed=1)
    assert torch.equal(pinned.test.x, a.test.x)
    assert pinned.recipe["info"]["test_split"]["seed"] == 0
    assert DATASETS.validate("npz", {"path": p})["split_seed"] is None
    with pytest.raises(ConfigError, match="split_seed"):
        DATASETS.validate("npz", {"path": p, "split_seed": -1})


def test_negative_seeds_are_config_errors():
    with pytest.raises(ConfigError, match="'seed'=-1"):
        load_task("mnist1d", {"num_samples": 600, "seed": -1})
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        load_task("mnist1d", {"num_samples": 600}, seed=-1)
    with pytest.raises(ConfigError, match="seed"):
        stratified_split(np.arange(10) % 2, 0.2, -3)
