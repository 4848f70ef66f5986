"""The colored environments against their definition (Arjovsky et al. 2019)."""

import dataclasses

import numpy as np
import pytest
import torch

from richrep.data import apply_shift, load_task
from richrep.data.colored import Colored, build, paint
from richrep.errors import ConfigError


def _sigma(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n))


@pytest.fixture(scope="module")
def big():
    """Large enough for tight sampling bounds, cheap: random 'images' with class ids."""
    g = np.random.default_rng(0)
    n, nt = 40_000, 20_000
    x = g.random((n, 1, 4, 4)).astype(np.float32)
    xt = g.random((nt, 1, 4, 4)).astype(np.float32)
    return x, g.integers(0, 10, n), xt, g.integers(0, 10, nt)


def test_label_noise_and_colour_agreement_match_the_definition(big):
    x, c, xt, ct = big
    r = Colored()
    a = build(x, c, xt, ct, r, seed=1)
    clean = (c < 5).astype(np.int64)
    noise = float((a["y"] != clean).mean())
    assert abs(noise - 0.25) < 4 * _sigma(0.25, len(c))
    colour = (a["groups"] // 2) % 2
    for i, e in enumerate(r.train_envs):
        m = a["env"] == i
        assert abs(m.mean() - 0.5) < 0.001  # equal environments
        agree = float((colour[m] == a["y"][m]).mean())
        assert abs(agree - (1 - e)) < 4 * _sigma(e, int(m.sum()))
    ct_colour = (a["groups_test"] // 2) % 2
    for j, e in enumerate(r.test_envs):
        m = a["env_test"] == len(r.train_envs) + j
        assert m.sum() == len(ct)  # every test environment recolours the whole test set
        agree = float((ct_colour[m] == a["y_test"][m]).mean())
        assert abs(agree - (1 - e)) < 4 * _sigma(e, int(m.sum()))
    # the same noisy labels in every test environment: only the colour differs
    ys = a["y_test"].reshape(len(r.test_envs), -1)
    assert (ys == ys[0]).all()


def test_groups_environments_and_pixels_are_consistent(big):
    x, c, xt, ct = big
    a = build(x, c, xt, ct, Colored(), seed=2)
    g = a["groups"]
    assert (g // 4 == a["env"]).all() and (g % 2 == a["y"]).all()
    colour = (g // 2) % 2
    rows = np.arange(len(x))
    assert np.array_equal(a["x"][rows, colour], x[:, 0])  # the image is in its colour's channel
    assert (a["x"][rows, 1 - colour] == 0).all()  # the other channel is empty
    # 20 % of each training environment held out for validation
    held = np.zeros(len(x), bool)
    held[a["val_index"]] = True
    for i in range(2):
        m = a["env"] == i
        assert abs(held[m].mean() - 0.2) < 1e-3


def test_deterministic_from_the_seed(big):
    x, c, xt, ct = (v[:2000] for v in big)
    a, b, d = (build(x, c, xt, ct, Colored(), seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["y"], d["y"])


def test_positive_classes_and_downsampling():
    x = np.ones((4, 1, 28, 28), np.float32)
    assert paint(x, np.array([0, 1, 0, 1]), downsample=True).shape == (4, 2, 14, 14)
    r = Colored(positive=(2, 7), label_noise=0.0)
    assert r.binary(np.array([2, 3, 7, 9])).tolist() == [1, 0, 1, 0]
    with pytest.raises(ConfigError, match="downsample applies to images"):
        paint(np.ones((4, 1, 40), np.float32), np.zeros(4, int), downsample=True)


def test_registered_dataset_and_shift_give_environments():
    t = load_task("colored_mnist1d", {"base_params": {"num_samples": 2000}, "label_noise": 0.0})
    assert t.classes == (0, 1) and t.input_shape == (2, 40)
    assert set(t.train.env.tolist()) == set(t.val.env.tolist()) == {0, 1}
    assert set(t.test.env.tolist()) == {2, 3, 4}
    names = [e["name"] for e in t.recipe["info"]["environments"]]
    assert names == ["train e=0.1", "train e=0.2", "test e=0.9", "test e=0.1", "test e=0.5"]
    # no label noise: the label is the clean grouping of the original digit
    base = load_task("mnist1d", {"num_samples": 2000})
    s = apply_shift(base, "colored", {"label_noise": 0.0, "test_envs": [0.9]})
    assert s.classes == (0, 1) and set(s.test.env.tolist()) == {2}
    assert torch.equal(s.test.y, (base.test.y < 5).long())
    assert len(s.train) + len(s.val) == len(base.train) + len(base.val)
    vectors = dataclasses.replace(load_task("digits"), kind="vector")
    with pytest.raises(ConfigError, match="images and signals"):
        apply_shift(vectors, "colored")
