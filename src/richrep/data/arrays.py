"""Your own data: an ``.npz`` file with arrays ``x`` and ``y`` (and optionally ``x_test``,
``y_test``, ``groups``, ``groups_test``, and environments ``env``, ``env_test``, for the OOD
protocols; ``domains`` / ``domains_test`` are read as environments). Other arrays are ignored
with a warning naming them.

Members stored uncompressed (``np.savez``) are memory-mapped (:func:`memmap_npz`: the zip's
local headers give each ``.npy`` member's offset, its header the dtype and shape), so the file
is never read whole into memory before the splits are cut from it: only the rows a split takes
are read, straight into its float32 tensor. Compressed members (``np.savez_compressed``)
cannot be mapped and are read as before, once their ``.npy`` headers are checked
(:func:`check_declared`): an array larger than the memory available, or than the member holds,
is refused before numpy allocates it. Inputs must be finite and keep their values in float32
(:func:`~richrep.data.checks.check_inputs`)."""

from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from richrep.data.checks import available_memory, check_inputs, human_bytes, integer_ids
from richrep.data.datasets import DATASETS, RawData
from richrep.data.splits import stratified_split
from richrep.errors import DataError

HOW_TO_SAVE = "np.savez(path, x=x, y=y) (numeric x, integer y)"
NDIM = {"vector": 2, "signal": 3, "image": 4}
TRAIN, TEST = ("x", "y", "groups", "env"), ("x_test", "y_test", "groups_test", "env_test")
ALIASES = {"domains": "env", "domains_test": "env_test"}  # Split has environments only


@DATASETS.register("npz")
def npz(
    path: str,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    kind: Literal["auto", "image", "signal", "vector"] = "auto",
    scale: Literal["auto", "none"] | Annotated[float, Field(gt=0)] = "auto",
    split_seed: Annotated[int, Field(ge=0)] | None = None,
) -> RawData:
    """Arrays from an .npz: x (N, ...) and integer y (N,); x_test/y_test, groups, env optional.

    ``env`` / ``env_test`` (integer environment ids, N,) become the splits' environments
    (``Split.env``: the ``ood`` protocol's training and test environments); ``domains`` /
    ``domains_test`` are the same arrays under another name (richrep's splits have environments,
    not a separate notion of domain). ``kind: auto`` as a suite entry's target follows the run's
    input shape when the arrays hold the same values per example but for singleton axes (an
    MNIST-1D ``(N, 1, 40)`` or ``(N, 40)`` for a run on ``(1, 40)``).

    ``x`` may hold any real dtype (bool, int, uint, float); tasks hold float32. ``scale``:
    ``"auto"`` divides uint8 inputs by 255 (to [0, 1]) and keeps others as stored, ``"none"``
    keeps all as stored, a number divides the inputs by it (e.g. 65535 for uint16 images).
    ``x_test`` gets the same treatment as ``x``. Without ``x_test``, a stratified
    ``test_fraction`` of the examples is held out for testing, drawn with ``split_seed``
    (default: the experiment's seed). ``info`` records ``scaled`` and ``test_split``.
    """
    p = Path(path).expanduser()
    arrays = _checked_arrays(p)
    x, y, g, e = arrays["x"], arrays["y"], arrays.get("groups"), arrays.get("env")
    if x.ndim == 3 and kind in ("auto", "image"):
        x = x[:, None]
        if "x_test" in arrays:
            arrays["x_test"] = arrays["x_test"][:, None]
    if kind == "auto":
        kind = {2: "vector", 4: "image"}.get(x.ndim, "signal")
    if x.ndim != NDIM[kind]:
        raise DataError(
            f"{p}: kind={kind!r} needs x of {NDIM[kind]} dimensions (N, ...), got {x.shape}"
        )
    divisor = _divisor(p, scale, x.dtype, arrays.get("x_test"))
    info = {"path": str(p), "dtype": str(x.dtype), "scaled": "none"}
    if divisor is not None:
        info["scaled"] = f"{x.dtype}/{divisor:g}"
    # divided when the task cuts its splits (RawData.divide_by): a mapped file stays unread
    if "x_test" in arrays:
        xt, yt, gt, et = (arrays.get(k) for k in TEST)
        info["test_split"] = {"from": "x_test"}
    else:
        seed = 0 if split_seed is None else split_seed
        train, test = stratified_split(y, test_fraction, seed, "npz-test")
        xt, yt, gt, et = (None if a is None else a[test] for a in (x, y, g, e))
        x, y = x[train], y[train]
        g, e = (None if a is None else a[train] for a in (g, e))
        info["test_split"] = {"from": "x", "fraction": test_fraction, "seed": seed}
    return RawData(
        x,
        y,
        xt,
        yt,
        kind=kind,
        class_names=(),
        g_train=g,
        g_test=gt,
        info=info,
        e_train=e,
        e_test=et,
        divide_by=divisor,
    )


def _checked_arrays(p: Path) -> dict[str, np.ndarray]:
    """The arrays of ``p`` that richrep reads, checked: x and y (and x_test with y_test) present,
    each set consistent, and all of them fitting in memory as float32."""
    arrays = _known(p, _read(p))
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{p} lacks array(s) {missing}; it has {sorted(arrays)} (need x and y)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{p}: give both x_test and y_test, or neither")
    for k in ("groups_test", "env_test"):
        if k in arrays and "x_test" not in arrays:
            raise DataError(f"{p}: {k} without x_test; give x_test and y_test too")
    sets = [TRAIN] + [TEST] * ("x_test" in arrays)
    for keys in sets:
        _check_set(p, arrays, *keys)
    need, free = 4 * sum(arrays[s[0]].size for s in sets), available_memory()
    if free is not None and need > free:  # a mapped x is read whole into float32 tensors
        names = " and ".join(s[0] for s in sets) + (" take" if len(sets) > 1 else " takes")
        raise DataError(
            f"{p}: {names} {human_bytes(need)} as float32 (the tasks' dtype), more than the "
            f"{human_bytes(free)} of memory available"
        )
    return arrays


def _known(p: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with ``domains`` read as ``env``; a warning names the arrays richrep ignores."""
    for alias, name in ALIASES.items():
        if alias in arrays:
            if name in arrays:
                raise DataError(f"{p}: give {name} or {alias} (the same thing), not both")
            arrays[name] = arrays.pop(alias)
    unknown = sorted(set(arrays) - set(TRAIN) - set(TEST))
    if unknown:
        warnings.warn(
            f"{p}: ignored array(s) {unknown}; an npz is read for {list(TRAIN + TEST)} "
            f"({', '.join(ALIASES)} as environments)",
            stacklevel=3,
        )
        arrays = {k: v for k, v in arrays.items() if k not in unknown}
    return arrays


def _read(p: Path) -> dict[str, np.ndarray]:
    """The arrays of the .npz at ``p``; :class:`DataError` saying what the file is otherwise."""
    if not p.exists():
        raise DataError(f"npz file {p} does not exist")
    if not p.is_file():
        raise DataError(f"npz file {p} is not a file")
    with p.open("rb") as fh:
        head = fh.read(6)
    if head == b"\x93NUMPY":
        raise DataError(f"{p} is a .npy file, not a .npz archive; save with {HOW_TO_SAVE}")
    if head[:1] == b"\x80":
        raise DataError(_pickled(p))
    if not head.startswith(b"PK"):
        what = "empty" if not head else "not a zip archive"
        raise DataError(f"{p} is not a readable .npz file ({what}); save with {HOW_TO_SAVE}")
    try:
        check_declared(p)
        arrays = memmap_npz(p)
        with np.load(p, allow_pickle=False) as f:  # compressed members: read
            arrays.update({k: f[k] for k in f.files if k not in arrays})
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(_pickled(p)) from None
        raise DataError(f"{p} is not a readable .npz file ({e})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{p} is not a readable .npz file ({type(e).__name__}: {e})") from None
    odd = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if odd:
        raise DataError(f"{p} is not a readable .npz file: members {odd} are not .npy arrays")
    return arrays


def memmap_npz(p: Path) -> dict[str, np.ndarray]:
    """The uncompressed members of the .npz at ``p`` as read-only memory maps (name -> array);
    compressed, pickled or Fortran-ordered-object members are left out."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(p) as z, p.open("rb") as fh:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)  # the local file header: name and extra-field lengths at 26..30
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                continue
            fh.seek(
                info.header_offset
                + 30
                + int.from_bytes(local[26:28], "little")
                + int.from_bytes(local[28:30], "little")
            )
            shape, fortran, dtype = _header(fh)
            if dtype.hasobject:
                continue  # pickled: np.load below refuses it with its own message
            name = info.filename[: -len(".npy")]
            if int(np.prod(shape)) == 0:
                out[name] = np.zeros(shape, dtype=dtype)
                continue
            out[name] = np.memmap(
                p,
                dtype=dtype,
                mode="r",
                offset=fh.tell(),
                shape=shape,
                order="F" if fortran else "C",
            )
    return out


def check_declared(p: Path) -> None:
    """Read the ``.npy`` header of each member of the .npz at ``p`` (decompressing only its
    first bytes) and refuse an array larger than the member's data, or, compressed, than the
    memory available: ``np.load`` would allocate it whole before reading it."""
    free = available_memory()
    with zipfile.ZipFile(p) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as fh:
                shape, _, dtype = _header(fh)
                held = info.file_size - fh.tell()
            if dtype.hasobject:
                continue  # pickled: np.load refuses it with its own message
            need = math.prod(shape) * dtype.itemsize
            what = f"{p}: member {info.filename} declares a {dtype} array of shape {shape}"
            if info.compress_type != zipfile.ZIP_STORED and free is not None and need > free:
                raise DataError(
                    f"{what}, {human_bytes(need)}: more than the {human_bytes(free)} of memory "
                    "available to read it into"
                )
            if need > held:
                raise DataError(
                    f"{what} ({human_bytes(need)}) but holds {human_bytes(held)} of data: the "
                    "file is corrupt or truncated"
                )


def _header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from the ``.npy`` header at ``fh``'s position."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def _pickled(p: Path) -> str:
    return (
        f"{p} holds pickled Python objects (e.g. an object or ragged array), which richrep "
        "refuses to load for safety (unpickling can run code); save plain arrays with "
        + HOW_TO_SAVE
    )


def _check_set(p: Path, arrays: dict[str, np.ndarray], xk: str, yk: str, *ids: str) -> None:
    """Check one set (x, y, groups, env) in place: shapes, dtypes, integer labels and ids."""
    x, y = arrays[xk], arrays[yk]
    if x.ndim < 2:
        fix = "; for one feature per example use x[:, None]" if x.ndim == 1 else ""
        raise DataError(f"{p}: {xk} must have shape (N, features...), got {x.shape}{fix}")
    if x.shape[0] == 0:
        raise DataError(f"{p}: {xk} holds 0 examples")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{p}: {xk} must hold real numbers (bool, int or float), got {x.dtype}")
    check_inputs(x, xk, str(p))
    n = x.shape[0]
    if y.shape != (n,):
        raise DataError(f"{p}: {yk} must have shape ({n},) to match {xk}, got {y.shape}")
    arrays[yk] = integer_ids(y, f"labels ({yk})", str(p))
    for k in (k for k in ids if k in arrays):
        if arrays[k].shape != (n,):
            raise DataError(f"{p}: {k} must have shape ({n},) to match {xk}, got {arrays[k].shape}")
        what = "group ids" if k.startswith("groups") else "environment ids"
        arrays[k] = integer_ids(arrays[k], f"{what} ({k})", str(p))


def _divisor(
    p: Path, scale: str | float, dtype: np.dtype, x_test: np.ndarray | None
) -> float | None:
    """What to divide the inputs by for ``scale`` and ``x``'s dtype (None: nothing)."""
    if scale == "none":
        return None
    if scale != "auto":
        return float(scale)
    if x_test is not None and x_test.dtype != dtype and np.uint8 in (dtype, x_test.dtype):
        warnings.warn(
            f"{p}: x is {dtype} but x_test is {x_test.dtype}; scale='auto' treats both as x "
            "(set `scale` to choose)",
            stacklevel=3,
        )
    return 255.0 if dtype == np.uint8 else None
