"""ResNet-18/50 encoders (torchvision's layout and parameter counts, the CIFAR stem, the width
multiplier), the encoder contract, pretrained weights from local safetensors files, and a
ResNet-18 trained end to end in a tiny run whose checkpoints round-trip."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from richrep.config import parse_experiment
from richrep.errors import ConfigError, DataError, RegistryError
from richrep.members import PlanContext, build_model, plan_members
from richrep.models import ENCODERS, Encoder, build_encoder, count_params
from richrep.models.contract import check_entry
from richrep.models.weights import load_encoder_weights, read_weights
from richrep.pipeline import run_experiment
from richrep.plugins import load_plugins
from richrep.run import open_run
from richrep.training.checkpoint import load_checkpoint

load_plugins()
NARROW = {"cifar_stem": True, "widths": [4, 8, 8, 16]}
# torchvision.models.resnet18(weights=None).state_dict() keys (a handful), fc.* left out
TV18 = [
    "conv1.weight",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.1.bn2.bias",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_mean",
    "layer3.1.conv2.weight",
    "layer4.0.downsample.0.weight",
    "layer4.1.bn2.weight",
]
TV50 = ["layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer3.5.bn3.bias"]


@functools.cache
def meta(name: str, shape=(3, 224, 224), width: float = 1.0) -> Encoder:
    with torch.device("meta"):
        return build_encoder(name, shape, width)


def test_every_registered_encoder_passes_the_contract():
    assert {"mlp", "cnn", "resnet18", "resnet50"} <= set(ENCODERS.names())
    for name in ENCODERS.names():
        check_entry(ENCODERS, name)
    cfg = build_encoder("resnet18", (3, 32, 32), **NARROW).pretrained_cfg
    assert cfg["architecture"] == "resnet18" and cfg["input_size"] == (3, 32, 32)
    assert cfg["num_features"] == 16 and cfg["mean"] == (0.0, 0.0, 0.0)


def test_parameter_counts_equal_torchvision_without_fc():
    assert count_params(meta("resnet18")) == 11_176_512
    assert count_params(meta("resnet50")) == 23_508_032
    assert meta("resnet18").feature_dim == 512 and meta("resnet50").feature_dim == 2048


def test_torchvision_key_layout():
    keys18 = set(meta("resnet18").body.state_dict())
    keys50 = set(meta("resnet50").body.state_dict())
    assert set(TV18) <= keys18 and set(TV50) <= keys50
    assert not any(k.startswith("fc.") for k in keys18 | keys50)
    assert len(keys18) == 122 - 2  # torchvision's 122 keys less fc.weight and fc.bias
    assert len(keys50) == 320 - 2


def test_cifar_stem_on_32x32():
    e = build_encoder("resnet18", (3, 32, 32), **NARROW)
    assert e.body.conv1.kernel_size == (3, 3) and e.body.conv1.stride == (1, 1)
    assert isinstance(e.body.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    stem = e.body.relu(e.body.bn1(e.body.conv1(x)))
    assert stem.shape == (2, 4, 32, 32)  # full resolution after the stem
    assert e.body.layer4(e.body.layer3(e.body.layer2(e.body.layer1(stem)))).shape == (2, 16, 4, 4)
    assert e(x).shape == (2, 16)
    imagenet = build_encoder("resnet18", (1, 32, 32), widths=[4, 8, 8, 16])
    assert imagenet.body.conv1.kernel_size == (7, 7) and imagenet.body.conv1.in_channels == 1
    with pytest.raises(ConfigError, match=r"needs \(C, H, W\) images"):
        build_encoder("resnet18", (1, 40))


def test_zero_init_residual():
    e = build_encoder("resnet50", (3, 32, 32), zero_init_residual=True, widths=[4, 4, 8, 8])
    assert not e.body.layer1[0].bn3.weight.detach().any()
    assert e.body.layer1[0].bn1.weight.detach().all()


def test_width_multiplier_and_the_wide_baseline(tiny):
    assert count_params(meta("resnet18", width=2.0)) == pytest.approx(4 * 11_176_512, rel=0.01)
    assert meta("resnet50", width=2.0).feature_dim == 4096  # SimCLR's RN50w2
    tiny["model"] = {"encoder": "resnet18", "params": {"widths": [16, 32, 64, 128]}}
    ctx = PlanContext(parse_experiment(tiny), (1, 8, 8), [])
    base = ctx.encoder_params(1.0)
    w = ctx.match_width(4 * base)
    assert abs(ctx.encoder_params(w) / (4 * base) - 1) < 0.01 and w > 1.5


def test_broken_encoders_are_refused():
    with pytest.raises(RegistryError, match="no 'width' argument"):

        @ENCODERS.register("broken_nowidth")
        def nowidth(input_shape, depth: int = 2):
            raise AssertionError

    assert "broken_nowidth" not in ENCODERS

    with pytest.raises(RegistryError, match="first argument must be input_shape"):

        @ENCODERS.register("broken_order")
        def order(width: float = 1.0, input_shape=(1,)):
            raise AssertionError

    @ENCODERS.register("broken_shape", example_input=(1, 8))
    def wrong_shape(input_shape, width: float = 1.0) -> Encoder:
        body = nn.Sequential(nn.Flatten(), nn.Linear(8, max(1, int(4 * width))))
        return Encoder(body, 5, input_shape)  # says 5 features, returns 4

    @ENCODERS.register("broken_module", example_input=(1, 8))
    def not_encoder(input_shape, width: float = 1.0):
        return nn.Linear(8, int(4 * width))

    @ENCODERS.register("broken_width", example_input=(1, 8))
    def no_widening(input_shape, width: float = 1.0) -> Encoder:
        return Encoder(nn.Sequential(nn.Flatten(), nn.Linear(8, 4)), 4, input_shape)

    try:
        with pytest.raises(RegistryError, match=r"returns \(2, 4\), not \(N, feature_dim\)"):
            check_entry(ENCODERS, "broken_shape")
        with pytest.raises(RegistryError, match=r"broken_shape.*returns \(2, 4\)"):
            build_encoder("broken_shape", (1, 8))  # the first build checks it too
        with pytest.raises(RegistryError, match="no positive integer feature_dim"):
            build_encoder("broken_module", (1, 8))
        with pytest.raises(RegistryError, match="width multiplier must widen it"):
            build_encoder("broken_width", (1, 8))
    finally:
        for name in ("broken_shape", "broken_module", "broken_width"):
            ENCODERS.unregister(name)


def _image_run(tiny, tmp_path, **model):
    tiny["data"] = {"dataset": "digits"}
    tiny["model"] = {"encoder": "resnet18", "params": NARROW, **model}
    tiny["training"].update(epochs=1, batch_size=64)
    tiny["evaluation"] = {"suite": [{"name": "id", "sizes": ["all"]}], "floors": ["input"]}
    tiny["runtime"] = {"threads": 1}
    return parse_experiment(tiny)


@pytest.mark.slow
def test_resnet18_trains_one_epoch_end_to_end_and_its_checkpoints_round_trip(tiny, tmp_path):
    exp = _image_run(tiny, tmp_path)
    run = run_experiment(exp, tmp_path / "runs", log=lambda s: None)
    run = open_run(run.store.root)
    assert {m.name for m in run.members} == {"single-s0", "single-s1"}
    assert all(s.ok for s in run.statuses().values())
    cols = {r.column for r in run.evaluate({"name": "id2", "sizes": ["all"]})}
    assert {"single", "cat2", "input"} <= cols
    path = run.ledger.final("single-s0")
    tensors = load_file(path)
    assert "model/encoder.body.layer2.0.downsample.0.weight" in tensors
    fresh = build_model(run.member("single-s0"), run.exp, run.source_task)
    load_checkpoint(path, fresh)
    x = run.source_task.test.x[:8]
    assert torch.equal(fresh.eval()(x), run.classifier("single-s0")(x))
    # the encoder's weights load from the checkpoint file as a bare encoder state_dict, too
    other = build_encoder("resnet18", (1, 8, 8), **NARROW)
    load_encoder_weights(other, read_weights(path))
    assert torch.equal(other.eval()(x), run.encoder("single-s0")(x))


def test_pretrained_from_a_local_torchvision_layout_file(tiny, tmp_path):
    src = build_encoder("resnet18", (1, 8, 8), **NARROW)
    sd = {k: v.clone() for k, v in src.body.state_dict().items()}  # torchvision's layout
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 16), torch.zeros(10)
    save_file(sd, tmp_path / "rn18.safetensors")
    exp = _image_run(tiny, tmp_path, pretrained=str(tmp_path / "rn18.safetensors"))
    assert len(exp.model.pretrained.sha256) == 64
    exp2 = _image_run(tiny, tmp_path)
    assert exp.run_hash() != exp2.run_hash()
    assert "path" not in exp.identity()["model"]["pretrained"]  # the file's content, not path
    from richrep.data import load_task

    task = load_task("digits")
    m = plan_members(exp, (1, 8, 8))[0]
    model = build_model(m, exp, task)
    assert torch.equal(model.encoder.body.conv1.weight, src.body.conv1.weight)
    assert float(model.encoder.standardize.std) != 1.0  # the task's statistics stay
    # a file of another architecture: the key and both shapes, named
    wrong = build_encoder("resnet18", (1, 8, 8), cifar_stem=True, widths=[8, 8, 8, 16])
    save_file(dict(wrong.body.state_dict()), tmp_path / "wrong.safetensors")
    bad = _image_run(tiny, tmp_path, pretrained=str(tmp_path / "wrong.safetensors"))
    with pytest.raises(
        DataError,
        match=r"wrong\.safetensors.*'body\.conv1\.weight' has shape "
        r"\(8, 1, 3, 3\) in the file but \(4, 1, 3, 3\)",
    ):
        build_model(m, bad, task)
    # the file changed after the experiment recorded its sha256
    save_file(dict(wrong.body.state_dict()), tmp_path / "rn18.safetensors")
    with pytest.raises(ConfigError, match="the file changed since"):
        parse_experiment(exp.model_dump(mode="json"))
    with pytest.raises(ConfigError, match="does not exist"):
        _image_run(tiny, tmp_path, pretrained=str(tmp_path / "none.safetensors"))
