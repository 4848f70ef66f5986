"""The continual protocol: a nearest-class-mean stream on frozen features (Janson et al. 2022)."""

import pytest
import torch

from richrep.config import Spec, SuiteEntry
from richrep.data import load_task
from richrep.evaluation.continual import Continual, stream_ncm
from richrep.evaluation.protocols import Context
from richrep.representations import Representation


def blobs(n_per=30, classes=6, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(classes) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    return centers[y] + noise * torch.randn(len(y), classes, generator=g), y


def test_separable_classes_are_classified_after_every_task():
    x, y = blobs()
    xt, yt = blobs(seed=1)
    accs = stream_ncm(x, y, xt, yt, [[0, 1], [2, 3], [4, 5]])
    assert accs == [1.0, 1.0, 1.0]


def test_the_stream_ends_where_one_batch_fit_ends_and_only_seen_classes_count():
    x, y = blobs(noise=2.0)
    xt, yt = blobs(noise=2.0, seed=1)
    streamed = stream_ncm(x, y, xt, yt, [[3, 0], [5], [1, 2, 4]])
    at_once = stream_ncm(x, y, xt, yt, [[0, 1, 2, 3, 4, 5]])
    assert streamed[-1] == pytest.approx(at_once[0])  # the same means at the end
    first = stream_ncm(x, y, xt, yt, [[3, 0]])[0]
    assert first == streamed[0]  # after task 1 only classes 3 and 0 are scored
    two = (yt == 3) | (yt == 0)
    means = torch.nn.functional.normalize(
        torch.stack([x[y == 0].mean(0), x[y == 3].mean(0)]), dim=1
    )
    q = torch.nn.functional.normalize(xt[two], dim=1)
    expect = ((q @ means.t()).argmax(1) == (yt[two] == 3).long()).double().mean()
    assert first == pytest.approx(float(expect))


def test_rows_per_task_and_the_average_incremental_accuracy():
    task = load_task("digits")
    ctx = Context(
        featurizer=lambda rep, s: s.x.flatten(1), source=task, probe=Spec(name="linear"), seed=0
    )
    rep = Representation("input", 0, (), ("input",), 64, 0)
    entry = SuiteEntry(name="stream", protocol=Spec(name="continual"))
    rows = Continual(classes_per_task=2, orders=2).evaluate(ctx, rep, task, entry)
    for d in (0, 1):
        per_task = [r.value for r in rows if r.draw == d and r.metric == "accuracy"]
        aia = [r.value for r in rows if r.draw == d and r.metric == "average_incremental_accuracy"]
        assert len(per_task) == 5 and aia == [pytest.approx(sum(per_task) / 5)]
        assert per_task[0] > per_task[-1] > 0.8  # two classes are easier than ten
    orders = [r.extra["order"] for r in rows if r.metric == "average_incremental_accuracy"]
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(10))


def test_the_report_draws_accuracy_after_each_task(tmp_path):
    from richrep.report.html import ReportData, render_html

    task = load_task("digits")
    ctx = Context(
        featurizer=lambda rep, s: s.x.flatten(1), source=task, probe=Spec(name="linear"), seed=0
    )
    rep = Representation("input", 0, (), ("input",), 64, 0)
    entry = SuiteEntry(name="stream", protocol=Spec(name="continual"))
    rows = Continual(orders=1).evaluate(ctx, rep, task, entry)
    page = render_html(
        ReportData(
            name="x",
            run_id="x-0",
            rows=rows,
            entries=["stream"],
            entry_protocols={"stream": "continual"},
        ),
        tmp_path,
    )
    assert (tmp_path / "plots" / "stream.png").read_bytes()[:4] == b"\x89PNG"
    assert "stream" in page
