"""Real image data: train-time augmentations, the streamed ``image_folder`` dataset, shifts on
streamed data and ``richrep data export``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from richrep.cli import app
from richrep.config import TrainingConfig, parse_experiment
from richrep.data import Split, apply_shift, load_task
from richrep.data.arrays import memmap_npz
from richrep.data.augment import AUGMENTATIONS, build_augment
from richrep.data.images import ImageSource, concat
from richrep.errors import ConfigError, DataError
from richrep.models.encoders import ENCODERS
from richrep.pipeline import run_experiment
from richrep.stages.evaluate import read_results
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


# --- the image_folder dataset ------------------------------------------------------------------


def _folder(root: Path, per_class: int = 6, classes: int = 3, size: int = 10) -> Path:
    """A tiny image folder: train/ and test/, ``classes`` classes, images of varied sizes,
    greyscale and RGB, PNG and JPEG."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                s = size + i % 3
                a = rng.integers(0, 256, (s, s + 1, 3), dtype=np.uint8)
                a[..., c] = 255  # a class is its colour
                if i % 2:
                    Image.fromarray(a).save(d / f"{i}.png")
                else:
                    Image.fromarray(a).convert("L").save(d / f"{i}.jpg", quality=95)
    return root


def _load(root: Path, **params: object):
    return load_task("image_folder", {"path": str(root), "size": 8, **params}, seed=0)


def test_image_folder_streams_and_is_deterministic(tmp_path):
    root = _folder(tmp_path / "imgs")
    t = _load(root)
    assert isinstance(t.train.x, ImageSource) and t.input_shape == (3, 8, 8)
    assert len(t.train) + len(t.val) == 18 and len(t.test) == 18
    assert t.class_names == ("class0", "class1", "class2")
    batch = t.train.x[torch.tensor([2, 0])]
    assert batch.shape == (2, 3, 8, 8) and 0 <= float(batch.min()) <= float(batch.max()) <= 1
    rng = torch.get_rng_state()
    streamed = torch.cat(list(t.train.x.split(4)))  # through a decoding worker
    assert torch.equal(rng, torch.get_rng_state())  # models built after are unaffected
    assert torch.equal(streamed, t.train.x[torch.arange(len(t.train))])
    again = _load(root)
    assert again.hash == t.hash and torch.equal(again.test.x[:5], t.test.x[:5])
    mean, std = t.train.x.channel_stats()
    assert mean.shape == (3,) and bool((std > 0).all())
    grey = _load(root, channels=1)
    assert grey.input_shape == (1, 8, 8) and grey.hash != t.hash
    single = load_task("image_folder", {"path": str(root / "train"), "size": 8}, seed=1)
    assert len(single.test) == 3 and single.recipe["info"]["test_split"]["from"] == "folder"


def test_training_order_on_streamed_data_is_a_function_of_seed_and_epoch(tmp_path):
    t = _load(_folder(tmp_path / "imgs", per_class=10))
    mem = Split(torch.cat(list(t.train.x.split(64))), t.train.y)
    cfg = TrainingConfig(epochs=2, batch_size=8, augment=AUG)

    def train(split: Split) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            ENCODERS.build("cnn", (3, 8, 8), channels=[4], feature_dim=8), torch.nn.Linear(8, 3)
        )
        train_member(model, split, cfg, 5, device=torch.device("cpu"), dtype=torch.float32)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    streamed = train(t.train)
    assert torch.equal(streamed, train(t.train))
    assert torch.allclose(streamed, train(mem), atol=1e-6)  # same batches as in memory


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    root = _folder(tmp_path / "imgs")
    before = _load(root).hash
    victim = root / "test" / "class1" / "3.png"
    a = np.asarray(Image.open(victim)).copy()
    a[0, 0] ^= 1
    Image.fromarray(a).save(victim)
    assert _load(root).hash != before
    stat = victim.stat()  # same size and mtime: only a content hash of the sample sees it
    a[0, 0] ^= 1
    Image.fromarray(a).save(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _load(root, verify=1000).hash != _load(root, verify=0).hash


def test_corrupt_image_names_the_file(tmp_path):
    root = _folder(tmp_path / "imgs")
    bad = root / "train" / "class2" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    t = _load(root, verify=0)  # not in the checked sample: found when decoded
    with pytest.raises(DataError, match="cannot decode image .*class2/1.png"):
        for i in range(len(t.train)):
            t.train.x[torch.tensor([i])]
    with pytest.raises(DataError, match="^cannot decode image .*class2/1.png"):  # via workers
        list(t.train.x.split(2))
    with pytest.raises(DataError, match="cannot decode image .*1.png"):
        _load(root, verify=1000)


def test_shifts_on_streamed_data_equal_shifts_in_memory(tmp_path):
    lazy = _load(_folder(tmp_path / "imgs"))
    mem = lazy.with_splits(
        **{n: s.with_x(s.x[torch.arange(len(s))]) for n, s in lazy.splits().items()}
    )
    mem.__dict__["hash"] = lazy.hash  # the same task: the shifts draw from the same seeds
    for name in ("rotation", "inversion", "gaussian_blur", "contrast"):
        a = apply_shift(lazy, name, {"severity": 3})
        b = apply_shift(mem, name, {"severity": 3})
        assert isinstance(a.test.x, ImageSource)
        idx = torch.tensor([4, 0, 7])
        assert torch.allclose(a.test.x[idx], b.test.x[idx], atol=1e-6), name
        sub = a.test.subset(torch.tensor([7, 4]))  # a subset keeps each example's draw
        assert torch.allclose(sub.x[torch.tensor([1])], b.test.x[4:5], atol=1e-6), name
    noisy = apply_shift(lazy, "gaussian_noise", {"severity": 2})
    a, b = noisy.test.x[torch.tensor([3, 5])], noisy.test.x[torch.tensor([5])]
    assert torch.equal(a[1], b[0]) and not torch.equal(a, lazy.test.x[torch.tensor([3, 5])])
    kept = apply_shift(lazy, "classes", {"keep": [2, 0]})
    assert isinstance(kept.test.x, ImageSource) and len(kept.test) == 12
    pooled = concat(lazy.train.x, apply_shift(lazy, "rotation", {"severity": 2}).val.x)
    assert len(pooled) == len(lazy.train) + len(lazy.val)
    assert pooled[torch.tensor([0])].shape == (1, 3, 8, 8)


def test_tiny_run_trains_the_cnn_on_an_image_folder_with_augmentation(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=8)
    exp = parse_experiment(
        {
            "name": "imgs",
            "data": {"dataset": "image_folder", "params": {"path": str(root), "size": 8}},
            "model": {"encoder": "cnn", "params": {"channels": [4], "feature_dim": 8}},
            "training": {"seeds": 2, "epochs": 1, "batch_size": 8, "augment": AUG},
            "evaluation": {
                "subsets": 1,
                "probe": {"Cs": [1.0]},
                "floors": [],
                "suite": [
                    {"name": "same", "sizes": ["all"]},
                    {"name": "rot", "shifts": [{"rotation": {"severity": 2}}], "sizes": ["all"]},
                ],
            },
            "runtime": {"threads": 1},
        }
    )
    run = run_experiment(exp, tmp_path / "runs", log=lambda m: None)
    rows = read_results(run)
    assert {r.entry for r in rows} == {"same", "rot"} and {r.column for r in rows} >= {"cat2"}
    assert all(0 <= r.value <= 1 for r in rows if r.metric == "accuracy")
    enc = run.encoders()
    std = next(iter(enc.values())).standardize
    assert std.mean.shape == (3, 1, 1)  # per-channel statistics of the training images


def test_export_command(tmp_path):
    out = tmp_path / "fm"
    args = ["data", "export", "digits", str(out), "--size", "12", "--channels", "3"]
    r = CliRunner().invoke(app, [*args, "--limit-per-class", "2"])
    assert r.exit_code == 0, r.output
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 40 and {p.parts[-3] for p in pngs} == {"train", "test"}
    assert Image.open(pngs[0]).size == (12, 12) and Image.open(pngs[0]).mode == "RGB"
    again = CliRunner().invoke(app, [*args, "--limit-per-class", "1"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = CliRunner().invoke(app, [*args, "--limit-per-class", "3", "--force"])
    assert forced.exit_code == 0 and len(list(out.rglob("*.png"))) == 60
    t = load_task("image_folder", {"path": str(out), "size": 12}, seed=0)
    assert t.num_classes == 10 and len(t.test) == 30 and t.class_names[:2] == ("0", "1")
    assert [p.name for p in tmp_path.iterdir()] == ["fm"]  # no leftovers


def test_npz_members_are_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 1, 6, 6), dtype=np.uint8)
    y, g = np.arange(60) % 3, np.arange(60) % 2
    np.savez(tmp_path / "a.npz", x=x, y=y, groups=np.asfortranarray(g))
    np.savez_compressed(tmp_path / "b.npz", x=x, y=y, groups=g)
    mapped = memmap_npz(tmp_path / "a.npz")
    assert isinstance(mapped["x"], np.memmap) and np.array_equal(mapped["x"], x)
    assert memmap_npz(tmp_path / "b.npz") == {}  # compressed: read, not mapped
    a = load_task("npz", {"path": str(tmp_path / "a.npz")}, seed=0)
    b = load_task("npz", {"path": str(tmp_path / "b.npz")}, seed=0)
    assert a.hash == b.hash and float(a.train.x.max()) <= 1.0
