"""Domains in folders: ``root/<domain>/<class>/<image>``, the layout of PACS, VLCS, OfficeHome
and TerraIncognita in DomainBed: the ``image_domains`` dataset (``image_folder``'s arguments,
plus ``holdout``).

Every domain holds the same class folders (sorted names are the classes). Each domain's images
are split (stratified, seeded) into test examples (``test_fraction``) and a pool, of which
``holdout`` is the validation split (DomainBed's ``out`` split of each domain). Every example
records its domain (``Split.env``), named in ``recipe["info"]["environments"]``; images are
streamed from disk as for class folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.data.image_folder import class_names, manifest, roots_seen, scan
from richrep.data.images import ImageSource, data_workers
from richrep.data.splits import stratified_split
from richrep.errors import DataError


def domain_folders(
    root: Path,
    *,
    size: int,
    channels: int,
    test_fraction: float,
    holdout: float,
    seed: int,
    verify: int,
    where: str,
) -> RawData:
    """The :class:`RawData` of a folder of domain folders (see the module docstring)."""
    domains = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domains:
        raise DataError(
            f"{where}: {root} holds no domain folders (expected {root}/<domain>/<class>/)"
        )
    seen = roots_seen(root)
    files: list[str] = []
    labels: list[int] = []
    env: list[int] = []
    stats: list[Any] = []
    classes: list[str] | None = None
    for d, name in enumerate(domains):
        found = scan(root / name, where, seen)
        if classes is None:
            classes = found.classes
        elif found.classes != classes:
            extra = sorted(set(found.classes) ^ set(classes))
            raise DataError(
                f"{where}: domain {name!r} has class folders {found.classes}, domain "
                f"{domains[0]!r} {classes} (differing: {extra}); every domain needs the same "
                f"classes"
            )
        files += [f"{name}/{f}" for f in found.files]
        labels += found.labels
        env += [d] * len(found.files)
        stats += found.stats
    assert classes is not None
    fp = manifest(root, files, stats, verify, seed, channels)
    source = ImageSource(root, files, size, channels, fp)
    y, e = np.asarray(labels, dtype=np.int64), np.asarray(env, dtype=np.int64)
    train, test, val = [], [], []
    for d in range(len(domains)):
        idx = np.flatnonzero(e == d)
        keep, held = stratified_split(y[idx], test_fraction, seed, "domain-test", domains[d])
        pool = idx[keep]
        _, out = stratified_split(y[pool], holdout, seed, "domain-val", domains[d])
        val.append(len(np.concatenate(train)) + out if train else out)
        train.append(pool)
        test.append(idx[held])
    tr, te = np.concatenate(train), np.concatenate(test)
    info = {
        "path": str(root),
        "size": size,
        "channels": channels,
        "manifest": fp,
        "environments": [{"id": i, "name": n, "role": "domain"} for i, n in enumerate(domains)],
        "domains": domains,
        "test_split": {"from": "domains", "fraction": test_fraction, "seed": seed},
    }
    return RawData(
        source.subset(tr),
        y[tr],
        source.subset(te),
        y[te],
        kind="image",
        class_names=class_names(classes),
        e_train=e[tr],
        e_test=e[te],
        val_index=np.concatenate(val),
        info=info,
    )


@DATASETS.register("image_domains")
def image_domains(
    path: str,
    size: Annotated[int, Field(ge=4, le=1024)] = 32,
    channels: Literal[1, 3] = 3,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    holdout: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    split_seed: Annotated[int, Field(ge=0)] | None = None,
    verify: Annotated[int, Field(ge=0)] = 64,
) -> RawData:
    """Images in domain folders of class folders (``<domain>/<class>/<image>``: PACS, VLCS,
    OfficeHome, TerraIncognita), streamed from disk: per domain a stratified ``test_fraction``
    for testing and ``holdout`` of the rest for validation, drawn with ``split_seed``."""
    root = Path(path).expanduser()
    where = "dataset 'image_domains'"
    if not root.is_dir():
        raise DataError(f"{where}: {root} is not a folder")
    data_workers()
    return domain_folders(
        root,
        size=size,
        channels=channels,
        test_fraction=test_fraction,
        holdout=holdout,
        seed=0 if split_seed is None else split_seed,
        verify=verify,
        where=where,
    )
