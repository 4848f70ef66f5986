"""Experiment validation: every error names the field, the value and the choices."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from richrep.config import dump_experiment, load_experiment, parse_experiment, stable_hash
from richrep.errors import ConfigError

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path, tmp_path, monkeypatch):
    if path.name == "own_checkpoints.yaml":  # reads the quickstart's checkpoint files
        folder = tmp_path / "runs/quickstart-65365f7e2f/checkpoints"
        folder.mkdir(parents=True)
        for i in range(5):
            (folder / f"single-s{i}.safetensors").write_bytes(bytes([i]))
        monkeypatch.chdir(tmp_path)
    exp = load_experiment(path)
    assert exp.run_id().startswith(exp.name + "-")


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        (
            {"training": {"optimizer": "adam"}},
            r"training\.optimizer: Input should be 'sgd' or 'adamw' \(got 'adam'\)",
        ),
        ({"training": {"seeds": 0}}, r"training\.seeds: .*between 1 and 10000"),
        ({"training": {"seeds": [1, 1]}}, r"training\.seeds: .*repeat"),
        (
            {"training": {"epochs": 0}},
            r"training\.epochs: Input should be greater than or equal to 1",
        ),
        ({"training": {"lr": -1}}, r"training\.lr"),
        (
            {"training": {"baselines": [{"kind": "wider", "k": 2}]}},
            r"training\.baselines\[0\]: unknown member kind 'wider' \(did you mean 'wide'\?\); "
            r"choose one of: bct, bt2, distill, diverse, joint, matryoshka, rfc, rfc_round, simplex, single, wide, wide_dim",
        ),
        ({"training": {"baselines": [{"kind": "wide", "k": 1}]}}, r"training\.baselines\.0\.k"),
        ({"trainig": {}}, r"trainig: unknown field"),
        (
            {"data": {"dataset": "mnist"}},
            r"data\.dataset.*unknown dataset 'mnist' \(did you mean 'mnist1d'\?\); choose one of: "
            r"colored_fashion_mnist, colored_mnist1d, digits, fashion_mnist, image_domains, image_folder, mnist1d, npz, rotated_domains",
        ),
        (
            {"data": {"dataset": "mnist1d", "params": {"num_sample": 5}}},
            r"dataset 'mnist1d' has no argument 'num_sample'",
        ),
        (
            {"data": {"dataset": "mnist1d", "params": {"max_translation": 0}}},
            r"'max_translation'=0 is invalid",
        ),
        ({"data": {"dataset": "mnist1d", "val_fraction": 1.5}}, r"data\.val_fraction"),
        (
            {"data": {"dataset": "mnist1d", "source": [{"classes": {"keep": []}}]}},
            r"data\.source\[0\]: shift 'classes' argument 'keep'",
        ),
        (
            {"data": {"dataset": "mnist1d", "source": ["blurr"]}},
            r"data\.source\[0\]: unknown shift 'blurr'; choose one of: classes",
        ),
        (
            {"model": {"encoder": "resnet"}},
            r"model\.encoder.*unknown encoder 'resnet' \(did you mean 'resnet(18|50)'\?\); "
            r"choose one of: cnn, mlp, resnet18, resnet50",
        ),
        (
            {"model": {"encoder": "mlp", "width": 0}},
            r"model\.width: Input should be greater than 0",
        ),
        (
            {"model": {"encoder": "mlp", "params": {"width": 2}}},
            r"set the width multiplier as model\.width",
        ),
        ({"name": "../../etc"}, r"name: String should match pattern"),
        (
            {
                "evaluation": {
                    "suite": [{"name": "a", "shifts": [{"gaussian_noise": {"severity": 7}}]}]
                }
            },
            r"evaluation\.suite\[0\]\.shifts\[0\]: shift 'gaussian_noise' argument 'severity'=7 is invalid: Input should be less than or equal to 5",
        ),
        (
            {"evaluation": {"suite": [{"name": "a", "protocol": "probe"}]}},
            r"evaluation\.suite\[0\]\.protocol: unknown protocol 'probe'; "
            r"choose one of: compatibility, continual, disambiguate, domain_generalization, few_shot, finetune, ood, retrieval, robustness, transfer, truncation",
        ),
        ({"evaluation": {"suite": [{"name": "a"}, {"name": "a"}]}}, r"unique; repeated: \['a'\]"),
        # member kinds', objectives' and augmentations' value constraints, from their
        # annotations: refused when the file is read, not when the member is planned or built
        (
            {"training": {"baselines": [{"kind": "distill", "k": 2, "temperature": 0}]}},
            r"training\.baselines\[0\]: member kind 'distill' argument 'temperature'=0 is invalid",
        ),
        (
            {"training": {"baselines": [{"kind": "distill", "k": 2, "label_weight": 2}]}},
            r"'label_weight'=2 is invalid: Input should be less than or equal to 1",
        ),
        ({"training": {"baselines": [{"kind": "rfc", "k": 2, "eta": 0}]}}, r"'eta'=0 is invalid"),
        ({"training": {"baselines": [{"kind": "bct", "k": 1, "weight": -1}]}}, r"'weight'=-1"),
        ({"training": {"baselines": [{"kind": "simplex", "k": 1, "scale": 0}]}}, r"'scale'=0"),
        (
            {"training": {"baselines": [{"kind": "matryoshka", "k": 2, "dims": []}]}},
            r"member kind 'matryoshka' argument 'dims'=\[\] is invalid",
        ),
        (
            {"training": {"baselines": [{"kind": "matryoshka", "k": 2, "weights": [1, -1]}]}},
            r"argument 'weights'=\[1, -1\] is invalid",
        ),
        (
            {"training": {"objective": {"irm": {"penalty_weight": -1}}}},
            r"training\.objective: objective 'irm' argument 'penalty_weight'=-1 is invalid",
        ),
        (
            {"training": {"objective": {"distillation": {"temperature": 0}}}},
            r"objective 'distillation' argument 'temperature'=0 is invalid",
        ),
        (
            {"training": {"augment": [{"random_resized_crop": {"scale": [0.9, 0.1]}}]}},
            r"training\.augment\[0\]: augmentation 'random_resized_crop' argument 'scale'.*"
            r"must be \(low, high\)",
        ),
        (
            {"data": {"dataset": "mnist1d", "source": [{"classes": {"keep": [1, 1]}}]}},
            r"data\.source\[0\]: shift 'classes' argument 'keep'=\[1, 1\].*lists a class twice",
        ),
        (
            {
                "evaluation": {
                    "suite": [
                        {
                            "name": "u",
                            "protocol": {"compatibility": {"old": "a", "sequences": {"s": ["a"]}}},
                        }
                    ]
                }
            },
            r"protocol 'compatibility' argument 'sequences'.*at least 2 items",
        ),
        # a probe's bad value fails when the file is read, before any training
        ({"evaluation": {"probe": {"Cs": -1}}}, r"probe 'linear' argument 'Cs'=-1 is invalid"),
        ({"evaluation": {"probe": {"Cs": []}}}, r"'Cs'=\[\] is invalid.*at least 1 item"),
        ({"evaluation": {"probe": {"Cs": [0.1, float("inf")]}}}, r"argument 'Cs'.*finite number"),
        ({"evaluation": {"probe": {"dtype": "float16"}}}, r"'dtype'='float16' is invalid"),
        ({"evaluation": {"probe": {"val_fraction": 1.0}}}, r"'val_fraction'=1\.0 is invalid"),
        ({"evaluation": {"probe": {"max_iter": 0}}}, r"'max_iter'=0 is invalid"),
        ({"evaluation": {"probe": {"tol": 0}}}, r"'tol'=0 is invalid"),
        ({"evaluation": {"probe": {"random_state": -1}}}, r"'random_state'=-1 is invalid"),
        ({"evaluation": {"probe": {"device": "gpu"}}}, r"'device'='gpu' is invalid.*device name"),
        (
            {"evaluation": {"probe": {"nearest_mean": {"metric": "l1"}}}},
            r"probe 'nearest_mean' argument 'metric'='l1' is invalid",
        ),
        (
            {"evaluation": {"suite": [{"name": "a", "probe": {"dtype": "half"}}]}},
            r"evaluation\.suite\[0\]\.probe: probe 'linear' argument 'dtype'='half'",
        ),
    ],
)
def test_errors_name_the_field(tiny, patch, match):
    raw = dict(tiny)
    for k, v in patch.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) and k in raw else v
    with pytest.raises(ConfigError, match=match):
        parse_experiment(raw)


def test_every_section_reports_its_own_registry_errors_at_once(tiny):
    """Each section checks its registry specs in its own validators: one reading names every
    bad spec (and a schema error beside them), each under its field, not only the first."""
    raw = dict(tiny)
    raw["data"] = {**raw["data"], "source": ["blurr"]}
    raw["training"] = {**raw["training"], "epochs": 0, "baselines": [{"kind": "wider", "k": 2}]}
    raw["evaluation"] = {"probe": {"dtype": "half"}, "floors": ["inputs"]}
    with pytest.raises(ConfigError) as e:
        parse_experiment(raw)
    lines = str(e.value).splitlines()
    assert lines[0] == "invalid experiment:"
    for part in (
        "  data.source[0]: unknown shift 'blurr'",
        "  training.epochs: Input should be greater than or equal to 1",
        "  training.baselines[0]: unknown member kind 'wider'",
        "  evaluation.probe: probe 'linear' argument 'dtype'='half' is invalid",
        "  evaluation.floors[0]: unknown floor 'inputs' (did you mean 'input'?)",
    ):
        assert any(line.startswith(part) for line in lines), (part, lines)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        parse_experiment(["a"])
    p = tmp_path / "x.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")


def test_yaml_is_read_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(p)


def test_probe_seed_and_device_stay_unset_through_resolve_and_reload(tiny, tmp_path):
    """The run fills a probe's ``random_state`` and ``device``: the resolved (stored) config
    never writes their defaults, a reloaded one leaves them unset, and a stored config that
    had the defaults written out reads the same as one that never had them."""
    tiny["evaluation"] = {
        "probe": {"Cs": [0.1, 1.0]},
        "suite": [{"name": "t", "probe": "linear"}, {"name": "m", "probe": "nearest_mean"}],
    }
    exp = parse_experiment(tiny)
    specs = [exp.evaluation.probe, *(e.probe for e in exp.evaluation.suite)]
    for spec in specs:
        assert "random_state" not in spec.params and "device" not in spec.params
    assert specs[0].params["val_fraction"] == 0.2  # other defaults are still written out
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_experiment(exp))
    assert load_experiment(p) == exp
    old = copy.deepcopy(tiny)  # as richrep wrote config.yaml before
    old["evaluation"]["probe"] = {"linear": {"Cs": [0.1, 1.0], "random_state": 0, "device": "auto"}}
    old["evaluation"]["suite"][1]["probe"] = {"nearest_mean": {"device": "auto"}}
    assert parse_experiment(old) == exp
    assert stable_hash(parse_experiment(old).results_identity()) == stable_hash(
        exp.results_identity()
    )
    mine = copy.deepcopy(tiny)  # a value other than the default is the user's
    mine["evaluation"]["probe"] = {"Cs": [0.1, 1.0], "random_state": 5, "device": "cpu"}
    params = parse_experiment(mine).evaluation.probe.params
    assert params["random_state"] == 5 and params["device"] == "cpu"
    assert parse_experiment(mine).run_id() == exp.run_id()  # the run folder's hash: no evaluation


def test_resolved_config_round_trips_and_hash_ignores_how(tiny, tmp_path):
    exp = parse_experiment(tiny)
    assert exp.data.params["num_samples"] == 1000 and exp.data.params["shear_scale"] == 0.75
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_experiment(exp))
    again = load_experiment(p)
    assert again == exp and again.run_id() == exp.run_id()
    tiny["training"]["device"] = "cpu"
    tiny["training"]["threads"] = 1
    tiny["evaluation"] = {"suite": [{"name": "x"}]}
    assert parse_experiment(tiny).run_id() == exp.run_id()  # how and what-to-evaluate: same models
    tiny["training"]["epochs"] = 3
    assert parse_experiment(tiny).run_id() != exp.run_id()
    assert parse_experiment(
        {**tiny, "training": {**tiny["training"], "seeds": 2}}
    ).training.seed_list == [0, 1]
