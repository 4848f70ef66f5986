"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 70,000 28×28 grey images of 10 clothing classes.

Looked up in ``$RICHREP_DATA/fashion-mnist``, the user cache (``~/.cache/richrep/fashion-mnist``)
and ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``); downloaded from
the official source into the cache when absent. Every file's decompressed content is checked
against a SHA-256, so a truncated or corrupt file is reported, never used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from richrep.data.datasets import DATASETS, RawData
from richrep.errors import DataError

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # name -> SHA-256 of the decompressed idx file
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("RICHREP_DATA"):
        dirs.append(Path(os.environ["RICHREP_DATA"]) / "fashion-mnist")
    dirs.append(cache_dir())
    dirs.append(SYSTEM_DIR)
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "richrep" / "fashion-mnist"


def read_idx(
    path: Path, expected_sha256: str | None = None, gzipped: bool | None = None
) -> np.ndarray:
    """Parse an IDX file (gzipped if its name ends in .gz), checking its content hash."""
    gzipped = path.suffix == ".gz" if gzipped is None else gzipped
    try:
        raw = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); delete it and load again") from None
    if expected_sha256 and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise DataError(
            f"{path} does not match the official Fashion-MNIST checksum (corrupt, truncated or a "
            f"different file); delete it and load again"
        )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(
            f"{path} is truncated: header says {shape}, file has {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_file(name: str, download: bool) -> Path:
    for d in search_dirs():
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.exists():
                return candidate
    if not download:
        raise DataError(_missing_message(name, "downloading is off (download=False)"))
    return fetch(name)


def fetch(name: str) -> Path:
    """Download ``name`` from the official source into the cache, atomically, checking its hash."""
    target = cache_dir() / f"{name}.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{name}.gz.part"
    try:
        try:
            with urllib.request.urlopen(URL + f"{name}.gz", timeout=30) as r:
                tmp.write_bytes(r.read())
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DataError(_missing_message(name, f"the download failed ({e})")) from None
        read_idx(tmp, FILES[name], gzipped=True)  # raises on a bad download
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # the cache never keeps a partial file
    return target


def _missing_message(name: str, why: str) -> str:
    dirs = ", ".join(str(d) for d in search_dirs())
    return (
        f"Fashion-MNIST file {name}(.gz) not found in {dirs}, and {why}. Get it with "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four files from "
        f"{URL} into $RICHREP_DATA/fashion-mnist."
    )


@DATASETS.register("fashion_mnist")
def fashion_mnist(download: bool = True) -> RawData:
    """Fashion-MNIST: 60,000 train / 10,000 test 28×28 grey images, 10 classes, pixels in [0, 1]."""
    paths = tuple(find_file(n, download) for n in FILES)
    x_train, y_train, x_test, y_test = _load(paths, tuple(p.stat().st_mtime_ns for p in paths))
    return RawData(x_train, y_train, x_test, y_test, kind="image", class_names=CLASS_NAMES)


@lru_cache(maxsize=1)
def _load(paths: tuple[Path, ...], mtimes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Read and check the four files once per process (read-only arrays; mtimes key the cache)."""
    arrays = [read_idx(p, h) for p, h in zip(paths, FILES.values(), strict=True)]
    out = (
        (arrays[0].astype(np.float32) / 255.0)[:, None],  # (N, 1, 28, 28) in [0, 1]
        arrays[1].astype(np.int64),
        (arrays[2].astype(np.float32) / 255.0)[:, None],
        arrays[3].astype(np.int64),
    )
    for a in out:
        a.setflags(write=False)
    return out
