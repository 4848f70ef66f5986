"""Domains as data (``rotated_domains``) and the ``domain_generalization`` protocol with its
methods (ERM, ensembles, soups, DiWA, very large dropout, LP-FT, [2ft]cat) on a tiny run."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from richrep.config import SuiteEntry, parse_experiment
from richrep.data import Split, load_task
from richrep.errors import ConfigError, DataError
from richrep.evaluation.dg import job as dgjob
from richrep.evaluation.dg.job import (
    DGJob,
    DropoutClassifier,
    Recipe,
    Trained,
    fingerprint,
    leave_one_out_slices,
    outputs,
    softmax_mean,
)
from richrep.evaluation.dg.protocol import METHODS, DomainGeneralization
from richrep.evaluation.dg.weights import average, check_averageable, greedy, soup
from richrep.evaluation.protocols import protocol_of
from richrep.models import Classifier, build_encoder
from richrep.pipeline import run_experiment
from richrep.plugins import DG_METHODS
from richrep.run import Run

DOMAINS = {"base": "digits", "angles": [0, 30, 60], "per_domain": 240, "test_per_domain": 90}
FAST = {"k": 2, "epochs": 2, "lp_epochs": 1, "batch_size": 64, "lr": 0.05}

EXP: dict[str, Any] = {
    "name": "dg",
    "seed": 0,
    "data": {"dataset": "digits"},
    "model": {"encoder": "mlp", "params": {"hidden": [32], "feature_dim": 16}},
    "training": {"seeds": 1, "epochs": 2, "batch_size": 64, "lr": 0.05, "precision": "fp32"},
    "evaluation": {"floors": [], "suite": []},
}


def entry(name: str = "dg", **params: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": "rotated_domains",
        "params": DOMAINS,
        "protocol": {"domain_generalization": {**FAST, **params}},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A tiny run (digits, one MLP) whose suite runs every method, leave-one-domain-out."""
    cfg = copy.deepcopy(EXP)
    cfg["evaluation"]["suite"] = [entry()]
    out = tmp_path_factory.mktemp("dg")
    return run_experiment(parse_experiment(cfg), out, log=lambda m: None)


@pytest.fixture(scope="module")
def rows(run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.store.results.read_text().splitlines()]


# -- domains as data ----------------------------------------------------------------------
def test_rotated_domains_are_disjoint_slices_rotated_by_their_angle():
    task = load_task("rotated_domains", DOMAINS)
    info = task.recipe["info"]
    assert [e["name"] for e in info["environments"]] == ["0°", "30°", "60°"]
    for s in task.splits().values():
        assert s.env is not None and set(s.env.tolist()) == {0, 1, 2}
    # 20 % of each domain's pool is validation; every domain has its own test examples
    for d in range(3):
        n_tr, n_va = int((task.train.env == d).sum()), int((task.val.env == d).sum())
        assert n_tr + n_va == 240 and n_va == 48
        assert int((task.test.env == d).sum()) == 90
    # the 0° domain holds unrotated digits; no image appears in two domains
    base = load_task("digits")
    pool = torch.cat([base.train.x, base.val.x]).flatten(1)
    zero = task.train.x[task.train.env == 0].flatten(1)
    assert all(bool((pool == z).all(1).any()) for z in zero[:20])
    rot = task.train.x[task.train.env == 2].flatten(1)
    assert not any(bool((pool == z).all(1).any()) for z in rot[:20])


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"angles": [0, 0]}, ConfigError, "angles repeat"),
        ({"base": "mnist1d"}, DataError, "rotation needs images"),
        ({"angles": []}, ConfigError, "angles"),
    ],
)
def test_bad_domain_datasets_are_refused(params, error, match):
    with pytest.raises(error, match=match):
        load_task("rotated_domains", {**DOMAINS, **params})


# -- the protocol -------------------------------------------------------------------------
def test_every_method_reports_each_domain_and_the_average_under_both_rules(rows):
    acc = [r for r in rows if r["metric"] == "accuracy"]
    envs = {"0°", "30°", "60°", "average"}
    labels = {"finetune", "ensemble2", "uniform_soup2", "greedy_soup2", "diwa2"}
    labels |= {"large_dropout", "lp_ft", "cat2-2ft"}
    for label in labels:
        for rule in ("train-domain", "oracle"):
            mine = [r for r in acc if r["variant"] == f"{label} · {rule}"]
            assert {r["environment"] for r in mine} == envs, label
            per_run = label in ("finetune", "large_dropout", "lp_ft")
            assert {r["draw"] for r in mine} == ({0, 1} if per_run else {0})
            assert all(0 <= r["value"] <= 1 for r in mine)
    mids = {r["variant"] for r in rows if r["metric"] == "midpoint_accuracy"}
    assert mids == {
        f"{s} · {rule}"
        for s in ("uniform_soup2", "greedy_soup2", "diwa2")
        for rule in ("train-domain", "oracle")
    }
    avg = [r for r in acc if r["variant"] == "ensemble2 · oracle"]
    per = [r["value"] for r in avg if r["environment"] != "average"]
    (mean,) = [r["value"] for r in avg if r["environment"] == "average"]
    assert mean == pytest.approx(float(np.mean(per)))


def small_job(run: Run, domain: int = 0, **kw: Any) -> tuple[DGJob, Any]:
    task = run.target(SuiteEntry.model_validate(entry()))
    slices = leave_one_out_slices(task, domain, f"d{domain}")
    job = DGJob(
        run,
        ("single-s0",),
        task.num_classes,
        slices,
        k=2,
        recipe=Recipe(0.05, 0.0, 2, 64),
        lp=Recipe(0.01, 0.0, 1, 64),
        where=(0, "t", domain),
        **kw,
    )
    return job, task


def test_leave_one_domain_out_never_trains_on_the_held_out_domain(run, monkeypatch):
    job, task = small_job(run, domain=1)
    pool_rows = task.train.root_rows().index
    held_ids = set(pool_rows[task.train.env == 1].tolist())
    held_ids |= set(task.val.root_rows().index[task.val.env == 1].tolist())
    seen = []
    real = dgjob.train_loop

    def spy(model, train, *a, **k):
        seen.append(train)
        return real(model, train, *a, **k)

    monkeypatch.setattr(dgjob, "train_loop", spy)
    for name in METHODS:
        DG_METHODS.build(name).evaluate(job)
    assert len(seen) >= 4 * 2  # erm, diwa, large dropout, lp-ft: K runs each
    for train in seen:
        assert bool((train.env != 1).all())
        assert not held_ids & set(train.root_rows().index.tolist())


def test_training_domain_selection_never_reads_the_test_domain(run):
    job, task = small_job(run, domain=2)
    s = job.slices
    scrambled = job.slices.__class__(
        s.domain,
        s.name,
        s.train,
        s.val,
        Split(s.oracle.x, (s.oracle.y + 1) % 10, env=s.oracle.env),
        Split(s.test.x, (s.test.y + 3) % 10, env=s.test.env),
    )
    other = DGJob(
        run, job.parts, job.classes, scrambled, k=2, recipe=job.recipe, lp=job.lp, where=job.where
    )

    def choices(j: DGJob) -> list[Any]:
        out = []
        for name in ("finetune", "greedy_soup", "diwa"):
            for o in DG_METHODS.build(name).evaluate(j):
                if o.rule == "train-domain" and o.metric == "accuracy":
                    out.append({k: v for k, v in o.extra.items() if k != "hyperparameters"})
        return out

    assert choices(job) == choices(other)
    a = [m.epochs["oracle"] for m in job.erm()] + [m.held["oracle"] for m in job.erm()]
    b = [m.epochs["oracle"] for m in other.erm()] + [m.held["oracle"] for m in other.erm()]
    assert a != b  # the oracle does read the (scrambled) test domain


# -- the methods on hand cases ------------------------------------------------------------
def tiny_net(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(build_encoder("mlp", (1, 8, 8), hidden=[8], feature_dim=4), 3)


def trained(name: str, model: nn.Module, init: str = "same") -> Trained:
    st = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Trained(name, lambda: copy.deepcopy(model), init, {"train-domain": st})


def test_a_uniform_soup_of_identical_networks_is_the_network():
    net = tiny_net()
    members = [trained(f"m{i}", net) for i in range(3)]
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(soup(members, "train-domain")(x), net.eval()(x), atol=1e-6)


def test_the_ensemble_is_the_mean_of_the_members_softmax():
    logits = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 0.0, 2.0]]])  # (K=2, N=1, C=3)
    e2 = float(np.exp(2))
    p = np.array([[e2, 1, 1], [1, 1, e2]]) / (e2 + 2)
    assert torch.allclose(softmax_mean(logits)[0], torch.tensor(p.mean(0), dtype=torch.float32))


def test_a_greedy_soup_is_never_worse_held_out_than_its_best_ingredient(run):
    job, _ = small_job(run, domain=0)
    members = job.erm()
    for rule in ("train-domain", "oracle"):
        chosen, held, own = greedy(job, members, rule)
        assert held >= max(own) and chosen[0] == int(np.argmax(own))


def test_dropout_is_active_only_while_training():
    net = DropoutClassifier(tiny_net(), 0.9)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        net.eval()
        plain = net.head(net.encoder(x))
        assert torch.equal(net(x), plain)
        net.train()
        assert not torch.allclose(net(x), plain)


def test_all_runs_are_evaluated_in_one_pass_over_the_data():
    reads = []

    nets = [tiny_net(i) for i in range(3)]
    x = torch.rand(1100, 1, 8, 8)
    orig = torch.Tensor.split

    def counting(self, *a, **k):
        reads.append(len(self))
        return orig(self, *a, **k)

    torch.Tensor.split = counting  # type: ignore[method-assign]
    try:
        out = outputs(nets, x, torch.device("cpu"), torch.float32)
    finally:
        torch.Tensor.split = orig  # type: ignore[method-assign]
    assert reads == [1100] and out.shape == (3, 1100, 3)
    with torch.no_grad():
        assert torch.allclose(out[1], nets[1].eval()(x), atol=1e-5)


# -- bad input -----------------------------------------------------------------------------
def test_averaging_across_architectures_or_initializations_is_refused():
    a, b = tiny_net(0), tiny_net(1)
    with pytest.raises(ConfigError, match="did not start from the same initialization"):
        check_averageable(
            [trained("a", a, fingerprint(a.state_dict())), trained("b", b, "other")],
            "train-domain",
        )
    torch.manual_seed(0)
    wide = Classifier(build_encoder("mlp", (1, 8, 8), hidden=[16], feature_dim=4), 3)
    with pytest.raises(ConfigError, match="different architectures"):
        check_averageable([trained("a", a), trained("w", wide)], "train-domain")
    assert set(average([a.state_dict(), a.state_dict()])) == set(a.state_dict())


def domain_task(run: Run, **params: Any):
    return run.target(SuiteEntry.model_validate(entry(**params)))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"angles": [0]}, ConfigError, "single domain"),
        ("no_class", DataError, "domain '30°' has no train examples of class"),
        ("no_env", ConfigError, "needs domains"),
        ({"test_domains": ["45°"]}, ConfigError, "not domains of the target"),
    ],
)
def test_bad_targets_are_refused_before_training(run, change, error, match):
    task = domain_task(run)
    proto_params = dict(FAST)
    if change == "no_class":
        keep = torch.nonzero(~((task.train.env == 1) & (task.train.y == 3))).flatten()
        task = task.with_splits(train=task.train.subset(keep))
    elif change == "no_env":
        task = task.with_splits(train=Split(task.train.x, task.train.y))
    elif "angles" in change:
        task = load_task("rotated_domains", {**DOMAINS, **change})
    else:
        proto_params.update(change)
    proto = DomainGeneralization(**proto_params)
    e = SuiteEntry.model_validate(entry())
    with pytest.raises(error, match=match):
        proto.check(e, task, task)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"methods": ["ensembel"]}, "did you mean"),
        ({"methods": ["finetune", "finetune"]}, "listed twice"),
        ({"shared_head_init": False}, "start from one initialization"),
        ({"methods": [{"large_dropout": {"rate": 1.5}}]}, "rate"),
        ({"k": 1}, "greater than or equal to 2"),
    ],
)
def test_bad_protocol_arguments_are_config_errors(params, match):
    cfg = copy.deepcopy(EXP)
    cfg["evaluation"]["suite"] = [entry(**params)]
    with pytest.raises(ConfigError, match=match):
        protocol_of(parse_experiment(cfg).evaluation.suite[0])


# -- the report ----------------------------------------------------------------------------
def test_the_domainbed_table_has_a_row_per_method_and_a_column_per_domain(rows, tmp_path):
    from richrep.report.figures.domain_generalization import dg_table, domainbed_table, markdown

    columns, body = dg_table(rows, "dg", "train-domain")
    assert columns == ["0°", "30°", "60°", "average"]
    labels = [lab for lab, _ in body]
    assert labels[:2] == ["finetune", "ensemble2"] and "cat2-2ft" in labels and len(labels) == 8
    finetune = dict(body)["finetune"]
    assert all(c is not None and c["n"] == 2 for c in finetune)  # two restarts per domain
    assert dict(body)["ensemble2"][0]["n"] == 1
    text = markdown(rows, "dg")
    assert "oracle selection" in text and "| finetune |" in text
    fig = domainbed_table(rows, "dg")
    assert len(fig.axes) == 2  # one table per selection rule
    from richrep.report.plots import save

    save(fig, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0 and (tmp_path / "t.svg").exists()


def test_each_method_records_its_time_and_the_view_sums_it(rows, run, capsys):
    from richrep.cli import app
    from richrep.report.figures.domain_generalization import method_seconds

    dg = [r for r in rows if r["entry"] == "dg" and r["environment"] != "average"]
    assert all(r["extra"]["seconds"] >= 0 for r in dg)
    times = dict((lab, (t, n)) for lab, t, n in method_seconds(rows, "dg"))
    assert set(times) == {lab.split(" · ")[0] for lab in {r["variant"] for r in dg}}
    assert all(n == 3 for _, n in times.values())  # three test domains, one trial
    ft = {
        (r["extra"]["test_domain"], r["extra"]["seconds"])
        for r in dg
        if r["extra"]["method"] == "finetune"
    }
    assert times["finetune"][0] == pytest.approx(sum(s for _, s in ft))
    result = CliRunner().invoke(app, ["results", str(run.store.root), "--dg"])
    assert result.exit_code == 0, result.output
    assert "| finetune |" in result.output and "Time (3 test domain" in result.output
    plain = CliRunner().invoke(app, ["results", str(run.store.root)])
    assert "--dg" in plain.output  # the usual table says where the DomainBed view is
    both = CliRunner().invoke(app, ["results", str(run.store.root), "--dg", "--ood"])
    assert both.exit_code != 0 and "one at a time" in both.output


# -- domain folders ------------------------------------------------------------------------
def domain_tree(root, domains=("art", "photo", "sketch"), classes=("dog", "cat"), n=10):
    from PIL import Image

    g = np.random.default_rng(0)
    for dom in domains:
        for c, name in enumerate(classes):
            d = root / dom / name
            d.mkdir(parents=True)
            for i in range(n):
                a = g.integers(0, 256, (6, 6, 3), dtype=np.uint8)
                a[..., c] = 255
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_domain_folders_make_one_environment_per_domain(tmp_path):
    root = domain_tree(tmp_path / "pacs")
    task = load_task("image_domains", {"path": str(root), "size": 8})
    names = [e["name"] for e in task.recipe["info"]["environments"]]
    assert names == ["art", "photo", "sketch"] and task.class_names == ("cat", "dog")
    for d in range(3):  # 20 per domain: 4 test, 16 pool of which 4 (2 per class) held out
        assert int((task.test.env == d).sum()) == 4
        assert int((task.val.env == d).sum()) == 4 and int((task.train.env == d).sum()) == 12
    src = task.train.x  # each streamed image's file sits in its domain's folder
    files = [src.files[int(p)] for p in src.pos[:, 0]]
    assert [names[int(e)] for e in task.train.env] == [f.split("/")[0] for f in files]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (None, None),
        (lambda r: (r / "t").mkdir(), "holds no domain folders"),
    ],
)
def test_bad_domain_folders_are_refused(tmp_path, make, match):
    if match is None:  # a domain missing a class folder
        domain_tree(tmp_path / "t2", domains=("art", "photo"))
        import shutil

        shutil.rmtree(tmp_path / "t2" / "photo" / "cat")
        root, match = tmp_path / "t2", "every domain needs the same classes"
    else:
        make(tmp_path)
        root = tmp_path / "t"
    with pytest.raises(DataError, match=match):
        load_task("image_domains", {"path": str(root), "size": 8})
