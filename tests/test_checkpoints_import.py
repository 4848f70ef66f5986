"""``training.seeds: {from_checkpoints: [...]}``: checkpoints someone already has become the
run's seeds without training (richrep's own checkpoint files and bare encoder state_dicts);
keys or shapes that do not fit are a clear error; a seed that is not clearly better than its
untrained encoder is warned about by name (the random-floor check)."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from richrep.config import parse_experiment
from richrep.errors import ConfigError, DataError
from richrep.models import build_encoder
from richrep.pipeline import run_experiment
from richrep.representations.floor_check import RandomFloorWarning, warn_below_floor
from richrep.runtime.seeding import seeded

MODEL = {"encoder": "mlp", "params": {"hidden": [64], "feature_dim": 32}}


def _exp(tiny, seeds, **training):
    tiny["data"] = {"dataset": "digits"}
    tiny["model"] = MODEL
    tiny["training"].update(seeds=seeds, epochs=4, **training)
    tiny["evaluation"] = {"suite": [{"name": "id", "sizes": ["all"]}]}
    tiny["runtime"] = {"threads": 1}
    return parse_experiment(tiny)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An earlier run's trained checkpoints (2 seeds of an MLP on sklearn's digits)."""
    import copy

    from conftest import TINY

    out = tmp_path_factory.mktemp("earlier")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = run_experiment(_exp(copy.deepcopy(TINY), 2), out, log=lambda s: None)
    assert not [w for w in caught if issubclass(w.category, RandomFloorWarning)]
    return run


def _import(tiny, paths, out, **kw):
    exp = _exp(tiny, {"from_checkpoints": [str(p) for p in paths]}, **kw)
    logs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = run_experiment(exp, out, log=logs.append)
    floor = [str(w.message) for w in caught if issubclass(w.category, RandomFloorWarning)]
    return run, floor, logs


@pytest.mark.slow  # end to end (seconds): CI's slow tier keeps it
def test_checkpoints_of_an_earlier_run_become_the_seeds(tiny, tmp_path, earlier):
    paths = [earlier.ledger.final(f"single-s{i}") for i in (0, 1)]
    run, floor, logs = _import(tiny, paths, tmp_path)
    assert floor == [] and any("imported 2 checkpoint(s)" in line for line in logs)
    status = run.statuses()
    meta = status["single-s0"].meta
    assert meta["imported_from"] == str(paths[0].resolve()) and meta["strategy"] == "imported"
    assert meta["source_layout"] == "richrep" and meta["head_imported"] is True
    assert meta["val_acc"] == pytest.approx(earlier.statuses()["single-s0"].meta["val_acc"])
    x = run.source_task.test.x[:16]
    assert torch.equal(run.encoder("single-s1")(x), earlier.encoder("single-s1")(x))
    columns = {r.column for r in run.evaluate({"name": "again", "sizes": ["all"]})}
    assert {"single", "cat2", "random2", "input"} <= columns
    # the identity is the files' content: moved files give the same run
    moved = [shutil.copy(p, tmp_path / f"moved{i}.safetensors") for i, p in enumerate(paths)]
    again = _exp(tiny, {"from_checkpoints": [str(tmp_path / "moved?.safetensors")]})
    assert again.training.seeds.from_checkpoints == [str(p) for p in sorted(map(str, moved))]
    assert again.run_hash() == run.exp.run_hash()
    with pytest.raises(ConfigError, match="listed twice"):
        _exp(tiny, {"from_checkpoints": [str(paths[0]), str(moved[0])]})
    with pytest.raises(ConfigError, match="no file matches"):
        _exp(tiny, {"from_checkpoints": [str(tmp_path / "none*.safetensors")]})


def test_untrained_checkpoints_trigger_the_random_floor_warning(tiny, tmp_path):
    paths = []
    for s in (10, 11):  # untrained encoders, saved as bare encoder state_dicts
        with seeded(s, "elsewhere"):
            enc = build_encoder("mlp", (1, 8, 8), **MODEL["params"])
        paths.append(tmp_path / f"untrained{s}.safetensors")
        save_file(dict(enc.state_dict()), paths[-1])
    run, floor, logs = _import(tiny, paths, tmp_path / "runs")
    assert len(floor) == 2 and floor[0].startswith("single-s0 (imported from ")
    assert "not clearly better than its untrained encoder" in floor[0]
    assert not any("WARNING" in line for line in logs)  # warned once, as a warning only
    meta = run.statuses()["single-s0"].meta
    assert meta["source_layout"] == "encoder" and meta["head_imported"] is False
    assert meta["val_acc"] is None
    with pytest.raises(
        DataError, match=r"no classifier head.*\['distill2-s0'\] learn from single-s0"
    ):
        _import(tiny, paths, tmp_path / "runs2", baselines=[{"kind": "distill", "k": 2}])


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tiny, tmp_path, earlier):
    enc = build_encoder("mlp", (1, 8, 8), hidden=[32], feature_dim=32)
    save_file(dict(enc.state_dict()), tmp_path / "narrow.safetensors")
    good = earlier.ledger.final("single-s0")
    with pytest.raises(
        DataError,
        match=r"narrow\.safetensors: key 'body\.1\.weight' has shape \(32, 64\) in the file but "
        r"\(64, 64\) in the encoder",
    ):
        _import(tiny, [good, tmp_path / "narrow.safetensors"], tmp_path / "runs")
    sd = {k: v for k, v in enc.state_dict().items() if k != "body.3.bias"}
    save_file(sd, tmp_path / "short.safetensors")
    with pytest.raises(DataError, match=r"short\.safetensors: missing 1 key\(s\).*'body\.3\.bias'"):
        _import(tiny, [good, tmp_path / "short.safetensors"], tmp_path / "runs2")
    (tmp_path / "weights.pt").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="not a .safetensors file"):
        _exp(tiny, {"from_checkpoints": [str(tmp_path / "weights.pt")]})


def test_warning_names_only_seeds_not_clearly_above():
    from richrep.representations.floor_check import FloorCheck

    checks = [
        FloorCheck("single-s0", 0.60, 0.50, 0.05, 800),
        FloorCheck("single-s1", 0.53, 0.50, 0.05, 800),
    ]
    with pytest.warns(RandomFloorWarning, match="single-s1 .imported from a.safetensors"):
        msgs = warn_below_floor(checks, sources={"single-s1": "a.safetensors"})
    assert len(msgs) == 1
