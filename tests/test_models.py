"""Encoder families: feature dimensions, parameter counts, width matching, joint towers."""

from __future__ import annotations

import pytest
import torch

from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.members import PlanContext, plan_members
from richrep.models import Classifier, JointEncoder, build_encoder, count_params


def test_mlp_parameter_count_by_hand():
    e = build_encoder("mlp", (1, 40), hidden=[32], feature_dim=16)
    assert e.feature_dim == 16
    assert count_params(e) == (40 * 32 + 32) + (32 * 16 + 16)
    assert e(torch.randn(3, 1, 40)).shape == (3, 16)


def test_cnn_2d_and_1d():
    e = build_encoder("cnn", (1, 28, 28))
    # conv 1→32 (3×3), conv 32→64, 7·7·64 → 128
    assert count_params(e) == (9 * 32 + 32) + (9 * 32 * 64 + 64) + (7 * 7 * 64 * 128 + 128)
    assert e(torch.rand(2, 1, 28, 28)).shape == (2, 128)
    e1 = build_encoder("cnn", (1, 40), channels=[8, 16], kernel_size=5, feature_dim=32)
    assert e1(torch.randn(2, 1, 40)).shape == (2, 32)
    with pytest.raises(ConfigError, match="needs"):
        build_encoder("cnn", (784,))


def test_width_scales_every_layer():
    e = build_encoder("mlp", (1, 40), width=2.0, hidden=[32], feature_dim=16)
    assert e.feature_dim == 32 and count_params(e) == (40 * 64 + 64) + (64 * 32 + 32)


def test_features_are_non_negative_and_standardized_input():
    e = build_encoder("mlp", (1, 40), hidden=[8], feature_dim=4)
    x = torch.randn(50, 1, 40) * 5 + 3
    e.set_input_stats(x)
    assert (
        abs(float(e.standardize(x).mean())) < 1e-5 and abs(float(e.standardize(x).std()) - 1) < 1e-4
    )
    assert float(e(x).detach().min()) >= 0.0


def test_joint_concatenates_towers():
    towers = [build_encoder("mlp", (1, 40), hidden=[8], feature_dim=4) for _ in range(3)]
    j = JointEncoder(towers)
    x = torch.randn(5, 1, 40)
    assert j.feature_dim == 12 and torch.equal(j(x), torch.cat([t(x) for t in towers], 1))
    c = Classifier(j, 7)
    assert c(x).shape == (5, 7) and count_params(c) == 3 * count_params(towers[0]) + 12 * 7 + 7


def test_wide_matches_catk_parameters(tiny):
    tiny["model"] = {"encoder": "cnn"}  # default 32/64 channels, 128 features
    ctx = PlanContext(parse_experiment(tiny), (1, 40), [])
    base = ctx.encoder_params(1.0)
    for k in (2, 5):
        w = ctx.match_width(k * base)
        assert abs(ctx.encoder_params(w) / (k * base) - 1) < 0.01
        assert w > 1.0


def test_plan_members(tiny):
    tiny["training"]["seeds"] = [3, 7, 9]
    tiny["training"]["baselines"] = [
        {"kind": "wide", "k": 3},
        {"kind": "wide_dim", "k": 3},
        {"kind": "joint", "k": 3, "seeds": 2},
    ]
    exp = parse_experiment(tiny)
    names = [m.name for m in plan_members(exp, (1, 40))]
    assert names == [
        "single-s3",
        "single-s7",
        "single-s9",
        "wide3-s3",
        "wide_dim3-s3",
        "joint3-s3",
        "joint3-s7",
    ]
    wd = plan_members(exp, (1, 40))[4]
    assert wd.feature_dim == 48  # 3 × 16


def test_input_stats_do_not_depend_on_the_thread_count():
    """A float32 mean of MNIST-1D's training inputs differs in its last bit between 1 and 2
    threads; the standardization buffers (and so every trained weight) must not."""
    from richrep.data import load_task

    x = load_task("mnist1d", {"num_samples": 8000}).train.x
    enc = build_encoder("mlp", (1, 40), hidden=[8], feature_dim=8)
    before = torch.get_num_threads()
    stats = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            enc.set_input_stats(x)
            stats.append((enc.standardize.mean.clone(), enc.standardize.std.clone()))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(stats[0][0], stats[1][0]) and torch.equal(stats[0][1], stats[1][1])
