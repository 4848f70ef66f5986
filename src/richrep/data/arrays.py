"""Your own data: an ``.npz`` file with arrays ``x`` and ``y`` (and optionally ``x_test``,
``y_test``, ``groups``, ``groups_test``)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.data.splits import stratified_split
from richrep.errors import DataError


@DATASETS.register("npz")
def npz(
    path: str,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    kind: Literal["auto", "image", "signal", "vector"] = "auto",
) -> RawData:
    """Arrays from an .npz: x (N, ...) and integer y (N,); x_test/y_test, groups optional."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"npz file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{p} is not a readable .npz file ({e})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{p} lacks array(s) {missing}; it has {sorted(arrays)} (need x and y)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{p}: give both x_test and y_test, or neither")
    x, y, g = arrays["x"], arrays["y"], arrays.get("groups")
    if x.ndim == 3 and kind in ("auto", "image"):
        x = x[:, None]
        if "x_test" in arrays:
            arrays["x_test"] = arrays["x_test"][:, None]
    if kind == "auto":
        kind = {2: "vector", 4: "image"}.get(x.ndim, "signal")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{p}: y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    if "x_test" in arrays:
        xt, yt, gt = arrays["x_test"], arrays["y_test"], arrays.get("groups_test")
    else:
        train, test = stratified_split(y, test_fraction, 0, "npz-test")
        xt, yt, gt = x[test], y[test], None if g is None else g[test]
        x, y, g = x[train], y[train], None if g is None else g[train]
    return RawData(x, y, xt, yt, kind=kind, class_names=(), g_train=g, g_test=gt)
