"""Real image data: train-time augmentations, the streamed ``image_folder`` dataset, shifts on
streamed data and ``richrep data export``."""

from __future__ import annotations

import pytest
import torch

from richrep.config import TrainingConfig, parse_experiment
from richrep.data import Split
from richrep.data.augment import AUGMENTATIONS, build_augment
from richrep.errors import ConfigError
from richrep.models.encoders import ENCODERS
from richrep.training.loop import train_member

AUG = [{"random_resized_crop": {"scale": [0.3, 1.0]}}, {"horizontal_flip": {"p": 0.5}}]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_deterministic_per_generator():
    fn = build_augment(AUG)
    x = torch.rand(6, 3, 12, 10)
    a, b, c = fn(x, _gen(1)), fn(x, _gen(1)), fn(x, _gen(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_augment_identity_cases():
    x = torch.rand(3, 1, 8, 8)
    assert build_augment([])(x, _gen(0)) is x
    whole = build_augment([{"random_resized_crop": {"scale": [1, 1], "ratio": [1, 1]}}])
    assert torch.equal(whole(x, _gen(0)), x)
    flip = build_augment([{"horizontal_flip": {"p": 1.0}}])
    assert torch.equal(flip(x, _gen(0)), x.flip(-1))


def test_augment_errors():
    with pytest.raises(ConfigError, match="did you mean 'horizontal_flip'"):
        build_augment(["horizontal_flp"])
    with pytest.raises(ConfigError, match="scale"):
        build_augment([{"random_resized_crop": {"scale": [0.9, 0.2]}}])
    with pytest.raises(ConfigError, match="image batches"):
        build_augment(["horizontal_flip"])(torch.rand(4, 5), _gen(0))
    assert "random_resized_crop" in AUGMENTATIONS


def test_augment_config_key_and_identity():
    base = {"name": "t", "data": {"dataset": "digits"}, "model": {"encoder": "mlp"}}
    plain = parse_experiment(base)
    aug = parse_experiment({**base, "training": {"augment": ["horizontal_flip"]}})
    assert aug.training.augment[0].params == {"p": 0.5}  # defaults filled in
    assert "augment" not in plain.identity()["training"]  # old runs keep their hash
    assert plain.run_hash() != aug.run_hash()


def test_training_with_augment_is_deterministic():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 2)
    cfg = TrainingConfig(epochs=2, batch_size=16, augment=AUG)

    def train() -> torch.Tensor:
        torch.manual_seed(0)
        model = ENCODERS.build("cnn", (1, 8, 8), channels=[4], feature_dim=8)
        head = torch.nn.Sequential(model, torch.nn.Linear(8, 2))
        train_member(head, split, cfg, 3, device=torch.device("cpu"), dtype=torch.float32)
        return torch.cat([p.detach().flatten() for p in head.parameters()])

    assert torch.equal(train(), train())
