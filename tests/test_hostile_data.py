"""Hostile data inputs: each ends in a correct result or a clear error naming the file, array or
variable, raised when the data loads (before any training), never a hang or a deep traceback."""

from __future__ import annotations

import io
import os
import signal
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from richrep.config import parse_experiment
from richrep.data import load_task
from richrep.errors import ConfigError, DataError
from richrep.pipeline import run_experiment

HUGE = (2_000_000, 1_000_000)  # float64: 1.6e13 bytes, 14.6 TiB


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A case that blocks (a FIFO opened for reading) fails after 60 s instead of hanging."""

    def timeout(*_: object) -> None:
        raise TimeoutError("the case blocked for 60 s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --- fixtures: tiny image folders and npz files ----------------------------------------------


def _grey(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _classes(root: Path, names: tuple[str, ...] = ("a", "b"), n: int = 4) -> Path:
    for c, name in enumerate(names):
        for i in range(n):
            _grey(root / name / f"{i}.png", 40 * c + i)
    return root


def _load(root: Path, **params: object):
    return load_task("image_folder", {"path": str(root), "size": 8, **params}, seed=0)


def _bomb_png(path: Path, side: int = 20_000) -> None:
    """A small PNG whose header declares ``side`` × ``side`` pixels (no pixel is allocated)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IHDR")
    data[at + 4 : at + 12] = struct.pack(">II", side, side)
    data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
    path.write_bytes(bytes(data))


def _huge_member_npz(path: Path, how: int = zipfile.ZIP_DEFLATED) -> Path:
    """An npz whose ``x.npy`` declares a 14.6 TiB float64 array in a few bytes."""
    head = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": HUGE}
    np.lib.format.write_array_header_1_0(head, header)
    with zipfile.ZipFile(path, "w", how) as z:
        z.writestr("x.npy", head.getvalue() + bytes(64))
        y = io.BytesIO()
        np.save(y, np.arange(HUGE[0] // 10**5) % 2)
        z.writestr("y.npy", y.getvalue())
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --- cases that must be refused --------------------------------------------------------------


def symlink_to_root(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    os.symlink(root, root / "c")
    return lambda: _load(root)


def symlink_to_class(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    os.symlink(root / "a", root / "c")
    return lambda: _load(root)


def symlink_loop(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    (root / "b" / "sub").mkdir()
    os.symlink(root / "b", root / "b" / "sub" / "loop")
    return lambda: _load(root)


def split_shares_a_class(tmp: Path) -> Callable[[], object]:
    root = tmp / "imgs"
    _classes(root / "train")
    (root / "test").mkdir()
    os.symlink(root / "train" / "a", root / "test" / "a")
    _classes(root / "test", names=("b",))
    return lambda: _load(root)


def empty_class(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs", names=("a", "c"))
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no images here")
    return lambda: _load(root)


def fifo(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    os.mkfifo(root / "b" / "pipe.png")
    return lambda: _load(root)


def dangling_symlink(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    os.symlink(tmp / "gone.png", root / "a" / "link.png")
    return lambda: _load(root)


def bomb(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    _bomb_png(root / "b" / "big.png")
    return lambda: _load(root)


def float_tiff(tmp: Path) -> Callable[[], object]:
    root = _classes(tmp / "imgs")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(root / "a" / "f.tif")
    return lambda: _load(root)


def workers_env(value: str) -> Callable[[Path], Callable[[], object]]:
    def case(tmp: Path) -> Callable[[], object]:
        root = _classes(tmp / "imgs")

        def load() -> object:
            os.environ["RICHREP_DATA_WORKERS"] = value
            try:
                return _load(root)
            finally:
                del os.environ["RICHREP_DATA_WORKERS"]

        return load

    return case


def npz_array(**arrays: np.ndarray) -> Callable[[Path], Callable[[], object]]:
    def case(tmp: Path) -> Callable[[], object]:
        p = _npz(tmp / "d.npz", **arrays)
        return lambda: load_task("npz", {"path": str(p)})

    return case


def huge_member_as_data(tmp: Path) -> Callable[[], object]:
    p = _huge_member_npz(tmp / "huge.npz")
    return lambda: load_task("npz", {"path": str(p)})


def huge_stored_member(tmp: Path) -> Callable[[], object]:
    p = _huge_member_npz(tmp / "huge.npz", zipfile.ZIP_STORED)
    return lambda: load_task("npz", {"path": str(p)})


def huge_member_as_target(tmp: Path) -> Callable[[], object]:
    p = _huge_member_npz(tmp / "huge.npz")
    raw = {
        "name": "hostile",
        "data": {"dataset": "mnist1d", "params": {"num_samples": 400}},
        "model": {"encoder": "mlp", "params": {"hidden": [8], "feature_dim": 4}},
        "training": {"seeds": 1, "epochs": 1},
        "evaluation": {"suite": [{"name": "own", "dataset": "npz", "params": {"path": str(p)}}]},
        "runtime": {"threads": 1},
    }
    out = tmp / "runs"

    def run() -> object:
        try:
            return run_experiment(parse_experiment(raw), out, log=lambda _: None)
        finally:  # refused before any training: no checkpoint was written
            assert not list(out.rglob("*.safetensors"))

    return run


def baseline(kind: str, k: int) -> Callable[[Path], Callable[[], object]]:
    def case(tmp: Path) -> Callable[[], object]:
        raw = {
            "name": "hostile",
            "data": {"dataset": "mnist1d"},
            "model": {"encoder": "mlp"},
            "training": {"seeds": 2, "baselines": [{"kind": kind, "k": k}]},
        }
        return lambda: parse_experiment(raw)

    return case


N = 40
Y = np.arange(N) % 2
BIG = (2**62 + np.arange(N * 3)).reshape(N, 3)
STAMPS = 1.7e9 + 0.25 * np.arange(N * 3).reshape(N, 3)  # float32's step there: 128 s
NAN = np.ones((N, 3))
NAN[4, 1] = np.nan
INF = np.ones((10, 3))
INF[2, 0] = np.inf

REFUSED = {
    "class folder -> dataset root": (
        symlink_to_root,
        DataError,
        r"imgs/c resolves to .*imgs, the dataset's folder or one above it",
    ),
    "class folder -> another class": (
        symlink_to_class,
        DataError,
        r"imgs/c resolves to .*imgs/a, read as .*imgs/a: its images would be read twice",
    ),
    "test class -> train class": (
        split_shares_a_class,
        DataError,
        r"test/a resolves to .*train/a, read as .*train/a",
    ),
    "symlink loop in a class folder": (
        symlink_loop,
        DataError,
        r"imgs/b/sub/loop resolves to .*imgs/b, read as .*imgs/b:",
    ),
    "empty class folder": (empty_class, DataError, r"class folder .*imgs/b holds no image"),
    "FIFO named .png": (fifo, DataError, r"b/pipe\.png is not a regular file"),
    "dangling symlink": (dangling_symlink, DataError, r"a/link\.png is a dangling symlink"),
    "20000 x 20000 PNG": (bomb, DataError, r"big\.png: .*400000000 pixels.* Resize it"),
    "32-bit float TIFF": (float_tiff, DataError, r"a/f\.tif holds 32-bit float pixels"),
    "RICHREP_DATA_WORKERS=abc": (workers_env("abc"), ConfigError, r"RICHREP_DATA_WORKERS.*'abc'"),
    "RICHREP_DATA_WORKERS=-2": (workers_env("-2"), ConfigError, r"RICHREP_DATA_WORKERS.*'-2'"),
    "int64 x near 2**62": (npz_array(x=BIG, y=Y), DataError, r": x holds .*float32"),
    "float64 timestamps near 1.7e9 s": (npz_array(x=STAMPS, y=Y), DataError, r": x holds"),
    "NaN in x": (npz_array(x=NAN, y=Y), DataError, r": x holds 1 NaN/inf value \(example 4"),
    "inf in x_test": (
        npz_array(x=np.ones((N, 3)), y=Y, x_test=INF, y_test=np.arange(10) % 2),
        DataError,
        r": x_test holds 1 NaN/inf value \(example 2",
    ),
    "14.6 TiB member (data)": (huge_member_as_data, DataError, r"x\.npy declares .*14\.6 TiB"),
    "14.6 TiB member, stored": (
        huge_stored_member,
        DataError,
        r"x\.npy declares .*\(14\.6 TiB\) but holds 64 B of data",
    ),
    "14.6 TiB member (suite target)": (
        huge_member_as_target,
        DataError,
        r"x\.npy declares .*14\.6 TiB",
    ),
    **{
        f"{kind} k=50 with 2 seeds": (
            baseline(kind, 50),
            ConfigError,
            rf"training\.baselines\.0\.k: {kind}50 stands for cat50, .* trains 2 seeds",
        )
        for kind in ("wide", "wide_dim", "joint", "distill")
    },
}


@pytest.mark.parametrize(("build", "error", "match"), REFUSED.values(), ids=REFUSED.keys())
def test_hostile_input_is_refused_clearly(tmp_path, build, error, match):
    act = build(tmp_path)
    with pytest.raises(error, match=match):
        act()


def test_inputs_larger_than_memory_are_refused(tmp_path, monkeypatch):
    """A mapped x is read whole into float32 tensors: refused when it cannot fit."""
    p = _npz(tmp_path / "d.npz", x=np.zeros((N, 30), np.uint8), y=Y)
    monkeypatch.setattr("richrep.data.arrays.available_memory", lambda: 4000)
    with pytest.raises(DataError, match=r"d\.npz: x takes 4\.7 KiB as float32.* 3\.9 KiB"):
        load_task("npz", {"path": str(p)})


# --- cases that must read correctly ----------------------------------------------------------


def _sixteen_bit(tmp: Path) -> tuple[Path, np.ndarray]:
    """Two classes that differ only above 255 (a `convert('L')` saturates both to white)."""
    root = tmp / "imgs"
    values = {"dark": 1000, "bright": 40000}
    for name, v in values.items():
        for i in range(5):
            a = (v + 97 * np.arange(64, dtype=np.uint16) + i).reshape(8, 8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / name / f"{i}.png")
            assert Image.open(root / name / f"{i}.png").mode == "I;16"
    return root, np.asarray(list(values.values()))


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_pngs_are_read_in_the_unit_range(tmp_path, channels):
    root, _ = _sixteen_bit(tmp_path)
    t = _load(root, channels=channels)
    splits = (t.train, t.val, t.test)
    x = np.concatenate([s.x[np.arange(len(s))].numpy() for s in splits])
    y = np.concatenate([s.y.numpy() for s in splits])
    assert x.shape[1] == channels and np.all(x[:, 1:] == x[:, :1])  # grey in every channel
    for c, name in enumerate(t.class_names):
        want = (1000 if name == "dark" else 40000) + 97 * np.arange(64).reshape(8, 8)
        got = x[y == c][:, 0]
        assert np.all(np.abs(got - want / 65535) <= 5 / 65535), name  # + i, i < 5


def test_symlinked_sub_folder_is_read(tmp_path):
    """Images in a sub-folder reached through a symlink count, under their class folder."""
    root = _classes(tmp_path / "imgs")
    _grey(tmp_path / "elsewhere" / "x.png", 200)
    _grey(tmp_path / "elsewhere" / "y.png", 201)
    os.symlink(tmp_path / "elsewhere", root / "b" / "more")
    t = _load(root, verify=1000)
    files = t.train.x.files
    assert len(files) == 10 and {"b/more/x.png", "b/more/y.png"} <= set(files)
    labels = np.concatenate([s.y.numpy() for s in (t.train, t.val, t.test)])
    assert int((labels == 1).sum()) == 6  # class b: its 4 images and the 2 linked ones


def test_large_integers_in_range_are_kept(tmp_path):
    """Integers float32 still resolves (counts up to 1e8) load as stored."""
    x = (np.arange(N * 3).reshape(N, 3) * 2_500_000).astype(np.int64)
    t = load_task("npz", {"path": str(_npz(tmp_path / "d.npz", x=x, y=Y))})
    pool = np.concatenate([t.train.x.numpy(), t.val.x.numpy(), t.test.x.numpy()])
    assert np.array_equal(np.sort(pool.ravel()), np.sort(x.ravel()).astype(np.float32))
