"""scikit-learn's bundled handwritten digits (8×8), optionally resized to match another dataset."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.data.splits import stratified_split


@DATASETS.register("digits")
def digits(
    size: Annotated[int, Field(ge=8, le=256)] = 8,
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
) -> RawData:
    """sklearn digits: 1,797 grey 8×8 images of 0–9 in [0, 1], resized to ``size``×``size``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        x = (
            F.interpolate(
                torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
            )
            .clamp_(0, 1)
            .numpy()
        )
    y = d.target.astype(np.int64)
    train, test = stratified_split(y, test_fraction, 0, "digits-test")
    return RawData(
        x[train],
        y[train],
        x[test],
        y[test],
        kind="image",
        class_names=tuple(str(i) for i in range(10)),
    )
