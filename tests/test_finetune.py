"""The ``finetune`` protocol ([init] and [2ft], Zhang & Bottou 2023) on a tiny run."""

from __future__ import annotations

import copy
import json
import shutil
from typing import Any

import pytest
import torch
from torch import nn

from richrep.config import SuiteEntry, parse_experiment
from richrep.data import Split
from richrep.data.splits import stratified_split
from richrep.errors import ConfigError
from richrep.evaluation import finetune
from richrep.evaluation.finetune import FineTune
from richrep.evaluation.finetune_train import accuracy_and_loss, concat_heads, network, predict
from richrep.evaluation.protocols import Context, protocol_of
from richrep.pipeline import run_experiment
from richrep.results import Row
from richrep.run import Run
from richrep.training.checkpoint import load_checkpoint

NEW = [{"classes": {"keep": [5, 6, 7]}}]
FAST = {"lrs": [0.05], "weight_decays": [0.0], "max_epochs": 2}


def entry(name: str, draws: int = 1, **params: Any) -> dict[str, Any]:
    """A suite entry on three classes the source never saw, 10 examples per class."""
    return {
        "name": name,
        "shifts": NEW,
        "protocol": {"finetune": {**FAST, **params}},
        "sizes": [10],
        "draws": draws,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A tiny run (MNIST-1D, 2 seeds) whose suite fine-tunes with mode init."""
    from tests.conftest import TINY

    cfg = copy.deepcopy(TINY)
    cfg["evaluation"] = {"suite": [entry("ft_init", mode="init")]}
    out = tmp_path_factory.mktemp("finetune")
    return run_experiment(parse_experiment(cfg), out, log=lambda m: None)


def ctx_of(run: Run) -> Context:
    return run.context()


def choices(rows: list[Row]) -> list[tuple[Any, ...]]:
    keys = ("mode", "lr", "weight_decay", "epochs", "val_acc", "val_loss")
    return [(r.column, r.seeds, r.draw, *(json.dumps(r.extra[k]) for k in keys)) for r in rows]


def test_the_evaluate_stage_fine_tunes_every_network_and_rows_carry_the_choice(run):
    rows = [json.loads(line) for line in run.store.results.read_text().splitlines()]
    # input and random2 are floors: no rows; single ×2 and cat2, one draw of 10 per class
    assert sorted(r["column"] for r in rows) == ["cat2", "single", "single"]
    for r in rows:
        assert r["protocol"] == "finetune" and r["size"] == 10 and r["metric"] == "accuracy"
        x = r["extra"]
        assert x["mode"] == "init" and x["lr"] == 0.05 and x["weight_decay"] == 0.0
        assert x["epochs"] in (1, 2) and 0 <= x["val_acc"] <= 1
        # 10 per class, 20% of each class held out for validation: 8 per class train
        assert r["train_n"] == 24 and x["val_n"] == 6 and x["per_class"] == 10
    (work,) = (run.store.root / "finetune_work").glob("ft_init-*")
    assert sorted(p.name for p in work.iterdir()) == [
        "cat2_0_1-10-0.json",
        "single1_0-10-0.json",
        "single1_1-10-0.json",
    ]
    assert not (run.store.root / "finetuned").exists()  # weights are not kept by default


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["init", "two_stage"])
def test_lr_weight_decay_and_epochs_are_chosen_on_validation_never_on_test(run, mode):
    spec = entry(f"sel_{mode}", mode=mode, lrs=[0.01, 0.2], weight_decays=[0.0, 0.01])
    spec["protocol"]["finetune"]["max_epochs"] = 3
    task = run.target(SuiteEntry.model_validate(spec))
    scrambled = task.with_splits(test=Split(task.test.x, (task.test.y + 1) % task.num_classes))
    kw = {k: v for k, v in spec.items() if k != "shifts"}
    rows = run.evaluate(task, representations=["single", "cat2"], **kw)
    other = run.evaluate(scrambled, representations=["single", "cat2"], **kw)
    assert choices(rows) == choices(other)
    assert [r.value for r in rows] != [r.value for r in other]  # the test labels did change


def test_concatenated_head_starts_from_the_mean_of_the_models_logits():
    torch.manual_seed(0)
    heads = [nn.Linear(d, 3) for d in (4, 6, 5)]
    feats = [torch.randn(7, h.in_features) for h in heads]
    head = concat_heads(heads)
    mean = torch.stack([h(f) for h, f in zip(heads, feats, strict=True)]).mean(0)
    torch.testing.assert_close(head(torch.cat(feats, dim=1)), mean)
    one = nn.Linear(4, 3)
    torch.testing.assert_close(concat_heads([one])(feats[0]), one(feats[0]))  # a single network


def test_two_stage_without_head_training_predicts_the_mean_of_the_fine_tuned_models(
    run, monkeypatch
):
    proto = FineTune(mode="two_stage", head_epochs=0, **FAST)
    spec = SuiteEntry.model_validate(entry("mean"))
    task, ctx = run.target(spec), ctx_of(run)
    cat2 = run.representation("cat2")
    (row,) = proto.evaluate(ctx, cat2, task, spec)
    assert row.extra["head_epochs"] == 0 and len(row.extra["epochs"]) == 2
    tuned = [t for key, t in proto._tuned.items() if key[5] in cat2.parts]
    assert len(tuned) == 2  # one fine-tuning per seed (and setting)
    data, ((_, _, idx),) = ctx.probe_sets(task, spec)
    _, held = stratified_split(data.y[idx], 0.2, run.exp.seed, "finetune", "mean", 10, 0)
    for split, y, value in (
        ("val", data.y[idx][held], row.extra["val_acc"]),
        ("test", task.test.y, row.value),
    ):
        with torch.no_grad():
            logits = torch.stack([t.head(t.features[split]) for t in tuned]).mean(0)
        assert accuracy_and_loss(logits, y)[0] == pytest.approx(value)
    # the singles reuse the seeds fine-tuned for cat2: nothing is fine-tuned again
    monkeypatch.setattr(finetune, "fit_network", lambda *a, **k: pytest.fail("fine-tuned twice"))
    for seed in (0, 1):
        rep = next(r for r in run.representations() if r.column == "single" and r.seeds == (seed,))
        assert len(proto.evaluate(ctx, rep, task, spec)) == 1


def test_floors_get_no_rows_and_no_training(run, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a floor was fine-tuned")

    monkeypatch.setattr(finetune, "fit_network", boom)
    spec = SuiteEntry.model_validate(entry("floors"))
    task, ctx = run.target(spec), ctx_of(run)
    floors = [r for r in run.representations() if r.kind in ("input", "random")]
    assert {r.column for r in floors} == {"input", "random2"}
    for mode in ("init", "two_stage"):
        proto = FineTune(mode=mode, **FAST)
        assert [row for r in floors for row in proto.evaluate(ctx, r, task, spec)] == []
    ctx.owner = None  # networks need the run behind the context
    with pytest.raises(ConfigError, match="needs the run"):
        FineTune().evaluate(ctx, run.representation("single"), task, spec)


def test_a_killed_entry_resumes_from_its_finished_items(run, monkeypatch):
    spec = entry("resume", draws=2, mode="two_stage")
    reps = ["single", "cat2"]
    whole = run.evaluate(spec, representations=reps)  # uninterrupted: 4 items
    for d in (run.store.root / "finetune_work").glob("resume-*"):
        shutil.rmtree(d)

    calls = []
    item = FineTune.item

    def dies_on_the_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed mid-entry
        return item(self, *a, **k)

    monkeypatch.setattr(FineTune, "item", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate(spec, representations=reps)
    (work,) = (run.store.root / "finetune_work").glob("resume-*")
    (done,) = work.iterdir()
    assert done.name.startswith("single1_") and done.name.endswith("-10-0.json")

    calls.clear()
    monkeypatch.setattr(
        FineTune, "item", lambda self, *a, **k: calls.append(1) or item(self, *a, **k)
    )
    rows = run.evaluate(spec, representations=reps)
    assert len(calls) == 3  # the finished item was read back, not trained again
    assert [r.to_dict() for r in rows] == [r.to_dict() for r in whole]

    calls.clear()
    (work / "cat2_0_1-10-1.json").write_text("{truncated")  # a damaged item is redone
    assert run.evaluate(spec, representations=reps) == rows and len(calls) == 1


def test_kept_weights_are_the_chosen_model(run):
    spec = entry("keep", mode="init", keep_weights=True)
    (row,) = run.evaluate(spec, representations=["cat2"])
    path = run.store.root / "finetuned" / "keep" / "cat2_0_1-10-0.safetensors"
    task = run.target(SuiteEntry.model_validate(spec))
    model = network(run, ("single-s0", "single-s1"), task.num_classes, "any")
    meta = load_checkpoint(path, model)
    assert meta["lr"] == row.extra["lr"] and meta["epochs"] == row.extra["epochs"]
    logits = predict(model, task.test.x, run.device, run.dtype)
    assert accuracy_and_loss(logits, task.test.y)[0] == pytest.approx(row.value)
    path.unlink()  # asked for but missing: that item is fine-tuned again
    assert run.evaluate(spec, representations=["cat2"]) == [row] and path.exists()


def test_columns_restrict_the_representations(run):
    spec = entry("cols", mode="init", columns=["cat2"])
    rows = run.evaluate(spec)
    assert [r.column for r in rows] == ["cat2"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lrs": []}, "lrs"),
        ({"weight_decays": [-1.0]}, "weight_decays"),
        ({"mode": "both"}, "mode"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"lr": 0.1}, "did you mean"),
    ],
)
def test_bad_arguments_are_config_errors(tiny, params, match):
    tiny["evaluation"] = {"suite": [{"name": "ft", "protocol": {"finetune": params}}]}
    with pytest.raises(ConfigError, match=match):
        parse_experiment(tiny)


def test_sizes_below_two_per_class_are_refused_before_training(tiny):
    spec = SuiteEntry.model_validate(entry("tiny", mode="init") | {"sizes": [1, 10]})
    with pytest.raises(ConfigError, match="at least 2 examples per class"):
        protocol_of(spec).check(spec, None, None)
