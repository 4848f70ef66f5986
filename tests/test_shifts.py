"""Each shift changes what it should and nothing else, reproducibly."""

from __future__ import annotations

import pytest
import torch

from richrep.data import Split, Task, apply_shift, apply_shifts, load_task
from richrep.errors import ConfigError, DataError

SEVERE = ["gaussian_noise", "gaussian_blur", "contrast", "rotation", "inversion"]


@pytest.fixture(scope="module")
def images() -> Task:
    """A small image task: 20 Fashion-MNIST images per class and split."""
    full = load_task("fashion_mnist", {"download": False})
    splits = {}
    for name, s in full.splits().items():
        idx = torch.cat([torch.nonzero(s.y == c).flatten()[:20] for c in range(10)])
        splits[name] = s.subset(idx)
    return full.with_splits(name="fmnist-small", **splits)


@pytest.fixture(scope="module")
def signals() -> Task:
    return load_task("mnist1d", {"num_samples": 600})


def test_classes_keeps_and_relabels(images):
    t = apply_shift(images, "classes", {"keep": [7, 2]})
    assert t.classes == (7, 2) and t.num_classes == 2 and t.class_names == ("Sneaker", "Pullover")
    for name, s in t.splits().items():
        src = images.splits()[name]
        assert torch.equal(s.x, torch.cat([src.x[src.y == 2], src.x[src.y == 7]])) or len(s) == 40
        assert set(s.y.tolist()) == {0, 1}
        # label 0 means original class 7: its images are the original class-7 images
        assert torch.equal(s.x[s.y == 0], src.x[src.y == 7])
        assert torch.equal(s.x[s.y == 1], src.x[src.y == 2])
    assert t.recipe["shifts"] == [{"classes": {"keep": [7, 2]}}]


def test_classes_errors(images):
    with pytest.raises(ConfigError, match="not in task"):
        apply_shift(images, "classes", {"keep": [3, 11]})
    with pytest.raises(ConfigError, match="twice"):
        apply_shift(images, "classes", {"keep": [3, 3]})
    with pytest.raises(ConfigError, match="at least 1"):
        apply_shift(images, "classes", {"keep": []})
    # a class absent from one split leaves it empty
    s = images.test
    no3 = images.with_splits(test=s.subset(torch.nonzero(s.y != 3).flatten()))
    with pytest.raises(DataError, match="test split .* empty"):
        apply_shift(no3, "classes", {"keep": [3]})


@pytest.mark.parametrize("name", SEVERE)
def test_corruption_changes_pixels_only(images, name):
    t = apply_shift(images, name, {"severity": 4})
    for sname, s in t.splits().items():
        src = images.splits()[sname]
        assert torch.equal(s.y, src.y) and s.x.shape == src.x.shape
        assert not torch.equal(s.x, src.x)
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
    again = apply_shift(images, name, {"severity": 4})
    assert torch.equal(again.test.x, t.test.x)  # reproducible
    assert t.classes == images.classes and t.hash != images.hash


@pytest.mark.parametrize("name", ["gaussian_noise", "gaussian_blur", "contrast", "rotation"])
def test_severity_is_monotone(images, name):
    dist = [
        float((apply_shift(images, name, {"severity": s}).test.x - images.test.x).pow(2).mean())
        for s in (1, 3, 5)
    ]
    assert dist[0] < dist[1] < dist[2]


def test_specific_corruptions(images):
    inv = apply_shift(images, "inversion", {"severity": 5})
    assert torch.allclose(inv.test.x, 1 - images.test.x)
    half = apply_shift(images, "inversion", {"severity": 3})
    changed = (half.test.x != images.test.x).flatten(1).any(1).float().mean()
    assert 0.4 < float(changed) < 0.8
    con = apply_shift(images, "contrast", {"severity": 2})
    m0, m1 = images.test.x.mean((1, 2, 3)), con.test.x.mean((1, 2, 3))
    assert torch.allclose(m0, m1, atol=1e-5)  # per-image mean kept
    assert float(con.test.x.std((1, 2, 3)).mean()) < 0.5 * float(
        images.test.x.std((1, 2, 3)).mean()
    )
    blur = apply_shift(images, "gaussian_blur", {"severity": 3})
    assert abs(float(blur.test.x.mean()) - float(images.test.x.mean())) < 0.01
    noise = apply_shift(images, "gaussian_noise", {"severity": 1})
    assert 0.03 < float((noise.test.x - images.test.x).std()) < 0.09
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 2:5, 10:18] = 1.0  # a bar near the top rotates away from the top
    bar = Task(
        "bar",
        *(Split(x, torch.zeros(1, dtype=torch.long)) for _ in range(3)),
        classes=(0,),
        class_names=("bar",),
        kind="image",
    )
    rot = apply_shift(bar, "rotation", {"severity": 5})  # ±90°
    assert float(rot.test.x[0, 0, :6].sum()) < 1.0 and float(rot.test.x.sum()) > 15


def test_severity_out_of_range(images):
    with pytest.raises(ConfigError, match="less than or equal to 5"):
        apply_shift(images, "gaussian_noise", {"severity": 6})
    with pytest.raises(ConfigError, match="has no argument 'sigma'"):
        apply_shift(images, "gaussian_noise", {"sigma": 0.3})


def test_mnist1d_generator_shifts(signals):
    same = apply_shift(signals, "mnist1d_noise", {"scale": 0.02})  # the default noise level
    assert torch.equal(same.test.x, signals.test.x) and torch.equal(same.test.y, signals.test.y)
    noisy = apply_shift(signals, "mnist1d_noise", {"scale": 0.3})
    assert torch.equal(noisy.test.y, signals.test.y)
    assert float(noisy.test.x.std()) > float(signals.test.x.std())  # not re-standardized
    for name, params in [
        ("mnist1d_shear", {"scale": 3.0}),
        ("mnist1d_translation", {"max_translation": 70}),
    ]:
        t = apply_shift(signals, name, params)
        assert torch.equal(t.test.y, signals.test.y) and not torch.equal(t.test.x, signals.test.x)


def test_mnist1d_shift_keeps_earlier_class_subset(signals):
    sub = apply_shifts(
        signals, [("classes", {"keep": [5, 6, 7]}), ("mnist1d_noise", {"scale": 0.2})]
    )
    assert sub.classes == (5, 6, 7) and set(sub.test.y.tolist()) == {0, 1, 2}
    ref = apply_shift(signals, "classes", {"keep": [5, 6, 7]})
    assert torch.equal(sub.test.y, ref.test.y)


def test_image_shift_on_signals_is_refused(signals, images):
    with pytest.raises(ConfigError, match="applies to image tasks"):
        apply_shift(signals, "rotation", {"severity": 1})
    with pytest.raises(ConfigError, match="applies to mnist1d"):
        apply_shift(images, "mnist1d_noise", {"scale": 0.1})
