"""Loaders: real Fashion-MNIST files, corrupt/missing files, MNIST-1D, .npz arrays, splits."""

from __future__ import annotations

import gzip
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from richrep.data import fashion_mnist as fm
from richrep.data import load_task
from richrep.data.splits import per_class_sample, stratified_split
from richrep.errors import DataError


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
