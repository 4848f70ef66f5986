"""MNIST-1D (Greydanus & Kobak, 2020): procedurally generated 1-D digit signals, offline.

We call the ``mnist1d`` package's own per-example transform, with three deliberate differences
from its ``make_dataset``: numpy's global RNG is isolated (restored afterwards); every example
draws from its own stream ``(seed, label, index)``, so a generator shift (more noise, more
shear) changes that factor of the same examples and nothing else; and signals are *not*
re-standardized with each generated set's own statistics, which would hide part of a shift.
Encoders standardize with their training task's statistics instead.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated

import numpy as np
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.errors import DataError

DEFAULTS = {
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
}


@lru_cache(maxsize=8)
def generate(
    num_samples: int,
    seed: int,
    iid_noise_scale: float,
    corr_noise_scale: float,
    shear_scale: float,
    max_translation: int,
    scale_coeff: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): ``num_samples`` signals of length 40, balanced classes, shuffled; read-only."""
    from mnist1d.data import get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import ObjectView

    args = ObjectView(
        dict(
            DEFAULTS,
            iid_noise_scale=iid_noise_scale,
            shear_scale=shear_scale,
            corr_noise_scale=corr_noise_scale,
            max_translation=max_translation,
            scale_coeff=scale_coeff,
        )
    )
    templates = get_templates()
    state = np.random.get_state()
    try:
        xs, ys = [], []
        per_class = num_samples // len(templates["y"])
        for label in range(len(templates["y"])):
            for i in range(per_class):
                np.random.seed([seed, label, i])  # per-example stream: a shift changes one factor
                x, _t = transform(templates["x"][label], templates["t"], args)
                xs.append(x)
                ys.append(label)
    finally:
        np.random.set_state(state)
    order = np.random.RandomState(seed).permutation(len(ys))
    x = np.stack(xs)[order].astype(np.float32)[:, None, :]
    y = np.asarray(ys, dtype=np.int64)[order]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


BYTES_PER_SAMPLE = 1400  # generation holds each signal as float64 arrays, a list and two copies
SECONDS_PER_SAMPLE = 3e-4  # generation time, an estimate for the message of check_size


def check_size(num_samples: int) -> None:
    """Refuse a ``num_samples`` whose generation would not fit in half of this machine's memory,
    saying how much it would need (and about how long it would take)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no estimate
        return
    need = num_samples * BYTES_PER_SAMPLE
    if need > memory // 2:
        raise DataError(
            f"dataset 'mnist1d': num_samples={num_samples:,} would need about "
            f"{need / 2**30:.1f} GiB to generate (and about "
            f"{num_samples * SECONDS_PER_SAMPLE / 3600:.1f} h); this machine has "
            f"{memory / 2**30:.1f} GiB. Use at most {memory // 2 // BYTES_PER_SAMPLE:,} samples"
        )


@DATASETS.register("mnist1d")
def mnist1d(
    num_samples: Annotated[int, Field(ge=100)] = 5000,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 42,
    iid_noise_scale: Annotated[float, Field(ge=0)] = 2e-2,
    corr_noise_scale: Annotated[float, Field(ge=0)] = 0.25,
    shear_scale: Annotated[float, Field(ge=0)] = 0.75,
    max_translation: Annotated[int, Field(ge=1)] = 48,
    scale_coeff: Annotated[float, Field(ge=0)] = 0.4,
) -> RawData:
    """MNIST-1D: 10 classes of 40-sample 1-D signals from the ``mnist1d`` generator (offline).

    ``seed`` (0 to 2**32 - 1) fixes the generated examples and which of them are the test set.
    """
    check_size(num_samples)
    x, y = generate(
        num_samples,
        seed,
        iid_noise_scale,
        corr_noise_scale,
        shear_scale,
        max_translation,
        scale_coeff,
    )
    n_test = int(round(test_fraction * len(y)))
    return RawData(
        x_train=x[n_test:],
        y_train=y[n_test:],
        x_test=x[:n_test],
        y_test=y[:n_test],
        kind="signal",
        class_names=tuple(str(i) for i in range(10)),
    )
