"""Retrieval, adaptive retrieval and backward-compatible upgrades: BCT (Shen et al. 2020), BT²
(Zhou et al. 2023), fixed-simplex classifiers (Biondi et al.), the compatibility protocol."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from richrep.config import Spec, SuiteEntry, parse_experiment
from richrep.data import load_task
from richrep.errors import ConfigError
from richrep.evaluation.compatibility import (
    Compatibility,
    average_compatibility,
    average_multi_model_accuracy,
    find_representation,
)
from richrep.evaluation.protocols import Context
from richrep.evaluation.retrieval import (
    Retrieval,
    funnel,
    have_faiss,
    mean_average_precision,
    search,
    top1,
)
from richrep.members.bct import BasisTransform, CompatibleHead, upgrade_tag
from richrep.members.simplex import FixedSimplex, simplex_vertices
from richrep.models import build_encoder
from richrep.objectives import BackwardCompatible
from richrep.representations import Representation


def test_bct_loss_is_new_cross_entropy_plus_weighted_influence_loss():
    logits = torch.randn(4, 2 * 3)
    y = torch.tensor([0, 2, 1, 1])
    loss = BackwardCompatible(0.5)(logits, {"y": y})
    expect = F.cross_entropy(logits[:, :3], y) + 0.5 * F.cross_entropy(logits[:, 3:], y)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert torch.equal(BackwardCompatible().predict(logits), logits[:, :3].argmax(1))


def test_compatible_head_reads_the_frozen_old_classifier_on_the_first_dims():
    torch.manual_seed(0)
    head = CompatibleHead(6, 3, old_dim=4)
    head.old_weight.copy_(torch.randn(3, 4))
    head.old_bias.copy_(torch.randn(3))
    z = torch.randn(5, 6)
    out = head(z)
    assert torch.allclose(out[:, 3:], z[:, :4] @ head.old_weight.t() + head.old_bias)
    assert torch.allclose(out[:, :3], head.new(z))
    trainable = {n for n, _ in head.named_parameters()}
    assert trainable == {"new.weight", "new.bias"}  # the old classifier never trains
    assert {"old_weight", "old_bias"} <= set(head.state_dict())  # but is checkpointed


def test_basis_transformation_is_orthonormal():
    enc = BasisTransform(build_encoder("mlp", (1, 10), hidden=[8], feature_dim=6))
    with torch.no_grad():
        enc.basis.parametrizations.weight.original.normal_()
    b = enc.basis.weight
    assert torch.allclose(b @ b.t(), torch.eye(6), atol=1e-5)
    h = enc.encoder(torch.randn(3, 1, 10))
    assert torch.allclose(enc.basis(h).norm(dim=1), h.norm(dim=1), atol=1e-5)


def test_simplex_vertices_are_a_regular_simplex_and_never_train():
    w = simplex_vertices(5, 8)
    assert torch.allclose(w.norm(dim=1), torch.ones(5))
    cos = w @ w.t()
    off = cos[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 4), atol=1e-6)
    assert torch.equal(w[:, 5:], torch.zeros(5, 3))
    z = torch.eye(8)[:5]  # a non-negative feature on coordinate c reaches vertex c
    assert torch.equal(FixedSimplex(8, 5)(z).argmax(1), torch.arange(5))
    assert not list(FixedSimplex(8, 5).parameters())
    with pytest.raises(ConfigError, match="at least 5"):
        simplex_vertices(5, 4)


def test_top1_and_map_on_a_hand_case():
    gallery_y = torch.tensor([0, 0, 1, 1, 1])
    query_y = torch.tensor([0, 1])
    nb = torch.tensor([[0, 2, 1], [0, 2, 3]])  # ranked gallery indices
    assert top1(nb, gallery_y, query_y) == 0.5
    # query 0: relevant at ranks 1 and 3 -> (1/1 + 2/3) / min(3, 2); query 1: ranks 2, 3 ->
    # (1/2 + 2/3) / min(3, 3)
    expect = ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 3) / 2
    assert mean_average_precision(nb, gallery_y, query_y) == pytest.approx(expect)


@pytest.mark.skipif(not have_faiss(), reason="needs faiss-cpu (pip install 'richrep[faiss]')")
def test_faiss_and_torch_search_agree():
    g = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(500, 24, generator=g), torch.randn(60, 24, generator=g)
    a = search(queries, gallery, 10, "faiss")
    b = search(queries, gallery, 10, "torch")
    assert torch.equal(a, b)
    f = funnel(queries, gallery, 8, 100, 10, "faiss")
    assert torch.equal(f, funnel(queries, gallery, 8, 100, 10, "torch"))


def test_funnel_equals_full_search_when_the_shortlist_is_everything():
    g = torch.Generator().manual_seed(1)
    gallery, queries = torch.randn(200, 16, generator=g), torch.randn(30, 16, generator=g)
    full = search(queries, gallery, 5, "torch")
    assert torch.equal(funnel(queries, gallery, 4, 200, 5, "torch"), full)
    short = funnel(queries, gallery, 4, 20, 5, "torch")
    assert short.shape == (30, 5) and not torch.equal(short, full)  # a real shortlist prunes
    with pytest.raises(ConfigError, match="one space"):
        search(queries[:, :4], gallery, 5)


def test_ac_and_am_on_a_hand_matrix():
    m = np.array([[0.6, np.nan, np.nan], [0.7, 0.8, np.nan], [0.5, 0.9, 0.85]])
    # pairs (i, j): (1,0) 0.7 > 0.6 yes; (2,0) 0.5 > 0.6 no; (2,1) 0.9 > 0.8 yes
    assert average_compatibility(m) == pytest.approx(2 / 3)
    assert average_multi_model_accuracy(m) == pytest.approx(
        (0.6 + 0.7 + 0.8 + 0.5 + 0.9 + 0.85) / 6
    )


def _digits_context(spaces: dict[str, torch.Tensor], noise: dict[str, float] | None = None):
    """A context whose featurizer maps a representation's parts to fixed linear maps of the
    digits' pixels (named spaces), plus per-example Gaussian noise of scale ``noise[name]``."""
    task = load_task("digits")
    noise = noise or {}

    def space(name, x):
        out = x.flatten(1) @ spaces[name]
        g = torch.Generator().manual_seed(len(x) * 1000 + sum(map(ord, name)))
        return out + noise.get(name, 0.0) * torch.randn(out.shape, generator=g)

    def featurize(rep, split):
        return torch.cat([space(p, split.x) for p in rep.parts], 1)

    reps = [
        Representation("single", 1, (i,), (name,), spaces[name].shape[1], 0)
        for i, name in enumerate(spaces)
    ]
    ctx = Context(
        featurizer=featurize, source=task, probe=Spec(name="linear"), seed=0, representations=reps
    )
    return task, ctx, reps


def _rows(rows, metric, variant_start):
    return [r.value for r in rows if r.metric == metric and r.variant.startswith(variant_start)]


def test_compatibility_constructed_cases():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(64, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    spaces = {
        "old": old,
        "same": old.clone(),  # an identical new model
        "rotated": old @ q,  # as good, in another basis: an independent model
        "random": torch.randn(64, 16, generator=g),
    }
    task, ctx, reps = _digits_context(spaces)
    entry = SuiteEntry(name="u", protocol=Spec(name="compatibility", params={"old": "old"}))
    proto = Compatibility(old="old")
    got = {r.parts[0]: proto.evaluate(ctx, r, task, entry) for r in reps}
    self_top1 = _rows(got["old"], "top1", "old/old")[0]
    # identical models: cross-model retrieval equals self-retrieval, and gains nothing
    assert _rows(got["same"], "top1", "new/old")[0] == pytest.approx(self_top1)
    assert _rows(got["same"], "compatible", "other") == [0.0]
    assert _rows(got["same"], "compatibility_margin", "other") == [0.0]
    # as good but unaligned, or random: far below old/old, the criterion fails
    for name in ("rotated", "random"):
        assert _rows(got[name], "top1", "new/old")[0] < self_top1 - 0.3
        assert _rows(got[name], "compatible", "other") == [0.0]
    assert _rows(got["rotated"], "top1", "new/new")[0] == pytest.approx(self_top1)


def test_an_improved_compatible_model_passes_and_sequences_give_ac_am():
    g = torch.Generator().manual_seed(0)
    good = torch.randn(64, 16, generator=g)
    spaces = {"v1": good, "v2": good.clone(), "v3": good.clone()}  # one space, less noise
    task, ctx, reps = _digits_context(spaces, {"v1": 4.0, "v2": 2.0, "v3": 0.0})
    params = {"old": "v1", "sequences": {"s": ["v1", "v2", "v3"]}}
    entry = SuiteEntry(name="u", protocol=Spec(name="compatibility", params=params))
    proto = Compatibility(**params)
    rows = [r for rep in reps for r in proto.evaluate(ctx, rep, task, entry)]
    v3 = [r for r in rows if r.seeds == (2,)]
    assert _rows(v3, "compatible", "other") == [1.0]  # same space, less noise: compatible
    cells = [r for r in rows if r.metric == "cross_top1"]
    assert len(cells) == 6  # the lower triangle of a 3-model sequence, emitted once
    ac = [r.value for r in rows if r.metric == "average_compatibility"]
    assert ac == [1.0]


def test_the_upgrade_by_adding_seeds_keeps_the_old_blocks():
    g = torch.Generator().manual_seed(0)
    spaces = {
        "single-s0": torch.randn(64, 8, generator=g),
        "single-s1": torch.randn(64, 8, generator=g),
    }
    task, ctx, reps = _digits_context(spaces)
    cat = find_representation("cat2[1,0]", reps)
    assert cat.parts == ("single-s1", "single-s0") and cat.dim == 16
    entry = SuiteEntry(name="u", protocol=Spec(name="compatibility", params={"old": "single-s0"}))
    rows = Compatibility(old="single-s0").evaluate(ctx, cat, task, entry)
    cross = _rows(rows, "top1", "new/old · extends")[0]
    assert cross == _rows(rows, "top1", "old/old · extends")[0]
    assert find_representation("single-s1", reps).parts == ("single-s1",)
    with pytest.raises(ConfigError, match="no representation 'cat3"):
        find_representation("cat3[0,1,2]", reps)


def test_retrieval_protocol_rows_and_costs():
    task = load_task("digits")
    ctx = Context(
        featurizer=lambda rep, s: s.x.flatten(1), source=task, probe=Spec(name="linear"), seed=0
    )
    rep = Representation("input", 0, (), ("input",), 64, 0)
    entry = SuiteEntry(name="r", protocol=Spec(name="retrieval"))
    rows = Retrieval(prefixes=[8, 32], shortlist=[50], backend="torch").evaluate(
        ctx, rep, task, entry
    )
    by = {(r.metric, r.variant): r for r in rows}
    assert set(v for _, v in by) == {
        "full search",
        "funnel 8→64, shortlist 50",
        "funnel 32→64, shortlist 50",
    }
    n = len(task.train) + len(task.val)
    assert by[("top1", "funnel 8→64, shortlist 50")].extra["cost"] == pytest.approx(
        round((n * 8 + 50 * 64) / (n * 64), 6)
    )
    full = by[("top1", "full search")].value
    assert full > 0.9  # digits: pixels retrieve well
    assert by[("top1", "funnel 32→64, shortlist 50")].value >= full - 0.02


def test_bct_kind_ranges_and_chains(tiny):
    from richrep.members import plan_members

    raw = copy.deepcopy(tiny)
    raw["training"]["seeds"] = 3
    raw["training"]["baselines"] = [
        {"kind": "bct", "k": 1},
        {"kind": "bct", "k": 1, "old": "bct-s1"},
        {"kind": "bt2", "k": 2},
    ]
    exp = parse_experiment(raw)
    members = {m.name: m for m in plan_members(exp, (1, 40))}
    assert members["bct-s1"].requires == ("single-s0",)
    assert members["bct-s2-from-bct-s1"].requires == ("bct-s1",)
    assert members["bt2_2-s1"].feature_dim == 32  # 2 × the old member's 16
    assert upgrade_tag("bct-s2-from-bct-s1") == "from-bct-s2"
    for bad, match in (
        ({"kind": "bct", "k": 2}, r"training\.baselines\.0\.k: bct takes k = 1"),
        ({"kind": "bct", "k": 1, "old": "nope"}, "no member 'nope' is planned before it"),
        ({"kind": "simplex", "k": 3}, r"simplex takes k = 1"),
    ):
        raw["training"]["baselines"] = [bad]
        with pytest.raises(ConfigError, match=match):
            plan_members(parse_experiment(raw), (1, 40))
    raw["training"]["objective"] = "bct"
    raw["training"]["baselines"] = []
    with pytest.raises(ConfigError, match="reads the head of 'bct' members"):
        parse_experiment(raw)


@pytest.mark.slow
def test_a_run_trains_upgrades_and_evaluates_them(tiny, tmp_path):
    from richrep.pipeline import run_experiment
    from richrep.stages.evaluate import read_results

    raw = copy.deepcopy(tiny)
    raw["training"]["seeds"] = 3
    raw["training"]["baselines"] = [
        {"kind": "simplex", "k": 1, "seeds": 2},
        {"kind": "bct", "k": 1},
        {"kind": "bct", "k": 1, "old": "bct-s1"},  # a chained upgrade reads bct-s1's new head
        {"kind": "bct", "k": 1, "old": "simplex-s0"},  # a fixed classifier without bias
        {"kind": "bt2", "k": 2},
    ]
    new = [{"classes": {"keep": [5, 6, 7, 8, 9]}}]
    raw["evaluation"] = {
        "subsets": 1,
        "suite": [
            {"name": "ret", "shifts": new, "protocol": {"retrieval": {"shortlist": [100]}}},
            {
                "name": "upgrade",
                "shifts": new,
                "protocol": {
                    "compatibility": {
                        "old": "single-s0",
                        "sequences": {"seeds": ["single-s0", "cat2[0,1]", "cat3[0,1,2]"]},
                    }
                },
            },
        ],
    }
    run = run_experiment(parse_experiment(raw), tmp_path, log=lambda m: None)
    old_head = run.classifier("single-s0").head.weight
    assert torch.equal(run.classifier("bct-s1").head.old_weight, old_head)
    assert torch.equal(run.classifier("bt2_2-s1").head.old_weight, old_head)
    chained = run.classifier("bct-s2-from-bct-s1").head
    assert torch.equal(chained.old_weight, run.classifier("bct-s1").head.new.weight)
    from_simplex = run.classifier("bct-s1-from-simplex-s0").head
    assert torch.equal(from_simplex.old_weight, run.classifier("simplex-s0").head.weight)
    assert not from_simplex.old_bias.any()
    rows = read_results(run)
    cols = {r.column for r in rows if r.entry == "upgrade"}
    assert {"single", "cat2", "cat3", "bct", "bt2_2", "simplex"} <= cols
    seq = [r for r in rows if r.metric == "average_multi_model_accuracy"]
    assert len(seq) == 1 and 0 < seq[0].value <= 1
    report = (run.store.root / "report.html").read_text()
    assert "upgrade" in report and "ret" in report


def test_bct_refuses_an_old_classifier_of_another_shape():
    from richrep.members import Member
    from richrep.members.bct import BCT
    from richrep.models import Classifier

    def enc(d):
        return build_encoder("mlp", (1, 10), hidden=[8], feature_dim=d)

    new = Classifier(enc(6), 3)
    new.head = CompatibleHead(6, 3, 6)
    old = Classifier(enc(4), 3)
    member = Member("bct-s1", "bct", 1, 1, params={"old": "single-s0"})
    with pytest.raises(ConfigError, match=r"single-s0's classifier is \(3, 4\)"):
        BCT().prepare(member, new, [old])
    BCT().prepare(member, new, [Classifier(enc(6), 3)])  # the right shape is copied
