"""Your own images: a folder with one sub-folder per class, streamed from disk.

Layout: ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png`` (the test set as given), or
``DIR/<class>/*`` (a stratified ``test_fraction`` held out for testing, drawn with
``split_seed``, default the experiment's seed). Classes are the sub-folder names in sorted
order; PNG, JPEG, BMP, GIF, TIFF and WebP files of any size (up to Pillow's decompression-bomb
limit) are read with Pillow, converted to ``channels`` (1: grey, 3: RGB) and resized to
``size`` × ``size`` (bilinear), in [0, 1] (8-bit images divided by 255, 16-bit by 65535;
32-bit ones are refused). Nothing is decoded up front: the splits hold an
:class:`~richrep.data.images.ImageSource`. Refused when the data loads, with the folder or file
named: a class folder without images (class ids would shift), a folder reached twice through
symlinks (a loop, two class folders resolving to one folder, a class folder resolving to the
dataset's: images read twice, under two labels; symlinked sub-folders are otherwise followed),
and image names that are not regular files (a FIFO) or dangling symlinks.

The splits' fingerprint is a manifest — every file's relative path, size and modification
time — plus the content hashes (blake2b) of a seeded sample of ``verify`` files, which are
also decoded, so an unreadable file in the sample fails at load with its name.
:func:`export_image_folder` writes any registered image dataset in this layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.data.images import ImageSource, data_workers, decode
from richrep.data.splits import stratified_split
from richrep.errors import DataError
from richrep.store import TMP_PREFIX, write_json

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class Folder(NamedTuple):
    files: list[str]  # relative to the scanned folder, sorted
    labels: list[int]
    classes: list[str]  # the class folders' names, sorted
    stats: list[os.stat_result]  # of each file (symlinks followed)


Seen = dict[Path, Path | None]  # real folder -> how it was first reached (None: a dataset root)


def roots_seen(*roots: Path) -> Seen:
    """The dataset folders ``roots`` and every folder above them, which no class folder may
    reach."""
    seen: Seen = {}
    for root in roots:
        real = root.resolve()
        seen.update({p: None for p in (real, *real.parents)})
    return seen


def scan(root: Path, where: str, seen: Seen) -> Folder:
    """The class folders under ``root`` and their image files (see :func:`_images`); a
    :class:`DataError` naming a class folder that holds no image, since every later class id
    would shift."""
    if not root.is_dir():
        raise DataError(f"{where}: {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{where}: {root} holds no class folders (expected {root}/<class>/*.png)")
    out = Folder([], [], classes, [])
    for c, name in enumerate(classes):
        found = _images(root, root / name, where, seen)
        if not found:
            raise DataError(
                f"{where}: class folder {root / name} holds no image files "
                f"({', '.join(EXTENSIONS)}); classes are the sorted folder names, so every "
                "later class id would shift: add its images or remove the folder"
            )
        for f, st in found:
            out.files.append(f)
            out.labels.append(c)
            out.stats.append(st)
    return out


def _images(root: Path, folder: Path, where: str, seen: Seen) -> list[tuple[str, os.stat_result]]:
    """(path relative to ``root``, stat) of the image files under ``folder``, sorted, symlinked
    sub-folders followed. A :class:`DataError` names a folder reached twice (a symlink loop, a
    class folder resolving to another's folder, the dataset's or one above it: images read
    twice, under two labels), a dangling symlink, or an image name that is not a regular file
    (a FIFO would block its reader forever)."""
    found = []
    for dirpath, dirnames, names in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen:
            first = seen[real]
            why = "the dataset's folder or one above it" if first is None else f"read as {first}"
            raise DataError(
                f"{where}: {here} resolves to {real}, {why}: its images would be read twice; "
                "remove the symlink"
            )
        seen[real] = here
        dirnames.sort()
        for n in sorted(names):
            if not n.lower().endswith(EXTENSIONS) or n.startswith("."):
                continue
            path = here / n
            try:
                st = path.stat()
            except FileNotFoundError:
                what = "a dangling symlink" if path.is_symlink() else "gone"
                raise DataError(f"{where}: {path} is {what}; fix or remove it") from None
            except OSError as e:
                raise DataError(f"{where}: cannot read {path}: {e.strerror or e}") from None
            if not stat.S_ISREG(st.st_mode):
                raise DataError(
                    f"{where}: {path} is not a regular file (a FIFO, socket or device named "
                    "like an image); remove it"
                )
            found.append((str(path.relative_to(root)), st))
    return found


def manifest(
    root: Path,
    files: list[str],
    stats: list[os.stat_result],
    verify: int,
    seed: int,
    channels: int,
) -> str:
    """Fingerprint of ``files``: path, size and mtime of each (``stats``), plus the content hash
    of a seeded sample of ``verify`` of them (each also decoded, so a bad file in it fails
    here)."""
    h = hashlib.blake2b(digest_size=8)
    for f, st in zip(files, stats, strict=True):
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    g = torch.Generator().manual_seed(seed)
    for i in torch.randperm(len(files), generator=g)[: min(verify, len(files))].tolist():
        path = root / files[i]
        h.update(hashlib.blake2b(path.read_bytes(), digest_size=8).digest())
        decode(path, 8, channels)
    return h.hexdigest()


@DATASETS.register("image_folder")
def image_folder(
    path: str,
    size: Annotated[int, Field(ge=4, le=1024)] = 32,
    channels: Literal[1, 3] = 3,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    split_seed: Annotated[int, Field(ge=0)] | None = None,
    verify: Annotated[int, Field(ge=0)] = 64,
) -> RawData:
    """Images in class folders (``train/`` and ``test/``, or one folder), streamed from disk.

    ``size``: images are resized to size × size; ``channels``: 1 (grey) or 3 (RGB). Without
    ``test/``, a stratified ``test_fraction`` is held out with ``split_seed``. ``verify``:
    files whose content is hashed (and decoded) for the fingerprint, beside every file's
    size and mtime."""
    root = Path(path).expanduser()
    where = "dataset 'image_folder'"
    if not root.exists():
        raise DataError(f"{where}: {root} does not exist")
    data_workers()  # a bad $RICHREP_DATA_WORKERS fails now, not when training streams
    seed = 0 if split_seed is None else split_seed
    info: dict[str, Any] = {"path": str(root), "size": size, "channels": channels}
    if (root / "train").is_dir() and (root / "test").is_dir():
        seen = roots_seen(root / "train", root / "test")
        tr, te = scan(root / "train", where, seen), scan(root / "test", where, seen)
        if te.classes != tr.classes:
            raise DataError(
                f"{where}: {root}/test has classes {te.classes}, {root}/train {tr.classes}"
            )
        files = [f"train/{f}" for f in tr.files] + [f"test/{f}" for f in te.files]
        fp = manifest(root, files, tr.stats + te.stats, verify, seed, channels)
        source = ImageSource(root, files, size, channels, fp)
        n = len(tr.files)
        x_tr, x_te = source.subset(np.arange(n)), source.subset(np.arange(n, len(files)))
        y_tr, y_te, classes = tr.labels, te.labels, tr.classes
        info["test_split"] = {"from": "test/"}
    else:
        found = scan(root, where, roots_seen(root))
        files, y, classes = found.files, found.labels, found.classes
        fp = manifest(root, files, found.stats, verify, seed, channels)
        source = ImageSource(root, files, size, channels, fp)
        keep, held = stratified_split(np.asarray(y), test_fraction, seed, "image_folder-test")
        x_tr, x_te = source.subset(keep), source.subset(held)
        y_tr, y_te = list(np.asarray(y)[keep]), list(np.asarray(y)[held])
        info["test_split"] = {"from": "folder", "fraction": test_fraction, "seed": seed}
    info["manifest"] = fp
    return RawData(
        x_tr,
        np.asarray(y_tr, dtype=np.int64),
        x_te,
        np.asarray(y_te, dtype=np.int64),
        kind="image",
        class_names=class_names(classes),
        info=info,
    )


# --- export ----------------------------------------------------------------------------------


def folder_name(i: int, name: str, n: int) -> str:
    """A class folder: its index zero-padded (so sorted order is class order) and its name
    made safe for file systems (``T-shirt/top`` -> ``0_T-shirt_top``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    index = f"{i:0{len(str(n - 1))}d}"
    return index if safe in ("", str(i)) else f"{index}_{safe}"


def class_names(folders: list[str]) -> tuple[str, ...]:
    """Class names of the sorted class folders: an export's ``<index>_`` prefixes dropped."""
    parts = [re.fullmatch(r"(\d+)(?:_(.+))?", f) for f in folders]
    if all(parts) and [int(m.group(1)) for m in parts] == list(range(len(folders))):
        return tuple(m.group(2) or m.group(1) for m in parts)
    return tuple(folders)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (any real dtype; uint8 kept) as uint8 ``(N, C, H, W)``."""
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


EXPORT_MARKER = ".richrep-export.json"  # in every export: what --force may replace


def export_image_folder(
    dataset: str,
    params: dict[str, Any],
    out: Path,
    *,
    size: int | None = None,
    channels: Literal[1, 3] | None = None,
    limit_per_class: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write the registered image dataset ``dataset`` as PNGs in class folders under
    ``out/train`` and ``out/test``, atomically (a new folder beside ``out``, renamed into
    place), with a marker file (:data:`EXPORT_MARKER`). ``out`` must be new or empty, or with
    ``force`` an earlier export holding only what richrep wrote; the current, home or root
    folder, a file or a symbolic link is refused (:func:`export_target`). Returns images
    written per split."""
    given = out
    out = export_target(Path(out), force)
    raw = DATASETS.build(dataset, where="data export", **DATASETS.validate(dataset, params))
    if raw.kind != "image":
        raise DataError(f"dataset {dataset!r} holds {raw.kind}s, not images; nothing to export")
    names = raw.class_names
    sets = {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)}
    picks = {}
    for split, (_, y) in sets.items():
        y = np.asarray(y)
        idx = np.arange(len(y))
        if limit_per_class is not None:
            idx = np.concatenate([np.flatnonzero(y == c)[:limit_per_class] for c in np.unique(y)])
        picks[split] = np.sort(idx)
    total = sum(len(i) for i in picks.values())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}export-", dir=out.parent))
    except OSError as e:
        raise DataError(f"cannot export to {given}: {e.strerror or e}") from None
    done, counts = 0, {}
    try:
        n_cls = int(max(np.max(raw.y_train), np.max(raw.y_test))) + 1
        for split, (x, y) in sets.items():
            for i in picks[split]:
                c = int(y[i])
                name = names[c] if c < len(names) else str(c)
                d = tmp / split / folder_name(c, name, n_cls)
                d.mkdir(parents=True, exist_ok=True)
                _save(to_uint8(np.asarray(x[i : i + 1]))[0], d / f"{i:06d}.png", size, channels)
                done += 1
                if progress:
                    progress(done, total)
            counts[split] = len(picks[split])
        marker = {"dataset": dataset, "params": params, "size": size, "channels": channels}
        write_json(tmp / EXPORT_MARKER, {"written_by": "richrep data export", **marker})
        _swap_in(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # made by this call, above
        raise DataError(f"cannot export to {given}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def export_target(out: Path, force: bool) -> Path:
    """``out`` as an absolute path once richrep may export there; otherwise a :class:`DataError`
    saying why: the root, home or current folder (or one holding it), a symbolic link, a file,
    a folder richrep did not export (or an export holding files it did not write), or an
    earlier export without ``force``."""
    path = Path(os.path.abspath(out.expanduser()))
    if path.is_symlink():
        raise DataError(
            f"{out} is a symbolic link; richrep will not export through it or replace it "
            f"(name a folder)"
        )
    for kept, what in _kept_folders():
        for p in {path, path.resolve()}:
            if p == kept or p in kept.parents:
                raise DataError(
                    f"{out} is {what}{'' if p == kept else ' (or holds it)'}; richrep exports "
                    f"only into a new folder or one it exported before"
                )
    above = next(p for p in (path, *path.parents) if os.path.lexists(p))
    if above != path and not above.is_dir():
        raise DataError(f"cannot export to {out}: {above} is not a folder")
    if not path.exists():
        return path
    if not path.is_dir():
        raise DataError(f"{out} is a file, not a folder; richrep will not replace it")
    if not any(path.iterdir()):
        return path
    if not (path / EXPORT_MARKER).is_file() or (path / EXPORT_MARKER).is_symlink():
        raise DataError(
            f"{out} holds files richrep did not export (no {EXPORT_MARKER}); --force replaces "
            f"only richrep's own exports: choose a new folder, or empty this one yourself"
        )
    foreign = _foreign_entry(path)
    if foreign:
        raise DataError(
            f"{out} is an earlier export but holds {foreign}, which richrep did not write; "
            f"move it out (or choose a new folder) and export again"
        )
    if not force:
        raise DataError(f"{out} holds an earlier export; pass --force to replace it")
    return path


def _kept_folders() -> list[tuple[Path, str]]:
    """Folders an export never replaces: the root, the home and the current folder."""
    kept = [(Path("/"), "the root folder")]
    for where, what in ((Path.home, "your home folder"), (Path.cwd, "the current folder")):
        with contextlib.suppress(OSError, RuntimeError):  # no home, a deleted working folder
            p = where()
            kept += [(p, what), (p.resolve(), what)]
    return kept


def _foreign_entry(root: Path) -> str:
    """The first entry of an earlier export that richrep did not write there ("" if none):
    anything but the marker, ``train/`` and ``test/`` holding class folders of ``NNNNNN.png``."""
    for dirpath, dirnames, names in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        depth = len(rel.parts)
        for n in sorted(dirnames + names):
            p = Path(dirpath) / n
            if p.is_symlink():
                return str(rel / n)
            if p.is_dir():
                ok = depth == 1 or (depth == 0 and n in ("train", "test"))
            else:
                ok = (depth == 0 and n == EXPORT_MARKER) or (
                    depth == 2 and re.fullmatch(r"\d{6}\.png", n) is not None
                )
            if not ok:
                return str(rel / n)
    return ""


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished export ``tmp`` at ``out``: a rename over a missing or empty folder, or,
    for an earlier export, a swap whose old copy is then removed (checked by the caller to hold
    only what richrep wrote)."""
    if not out.exists() or not any(out.iterdir()):
        os.rename(tmp, out)  # fails, losing nothing, if out filled up meanwhile
        return
    old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-", dir=out.parent))
    os.rename(out, old)  # over the empty folder just made
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def _save(img: np.ndarray, path: Path, size: int | None, channels: int | None) -> None:
    from PIL import Image

    a = img[0] if img.shape[0] == 1 else img[:3].transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(a))  # (H, W): grey, (H, W, 3): RGB
    if channels is not None:
        im = im.convert("L" if channels == 1 else "RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    im.save(path, format="PNG")
