"""Progress that tells the truth: weighted by the work each protocol counts (its estimate is
the work it reports), sparse lines off a terminal (a fake clock), an overall estimate, training
bars with epoch and loss, the train stage's last line (trained, reused, imported) and each
warning printed once."""

from __future__ import annotations

import copy
import io
import re
import warnings
from dataclasses import replace

import pytest
import torch
import yaml
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from richrep.cli import app
from richrep.cli.progress import Board, Ticker
from richrep.config import TrainingConfig, parse_experiment
from richrep.data import Split
from richrep.evaluation.protocols import EstimatesWork, protocol_of
from richrep.models import Classifier, build_encoder
from richrep.pipeline import run_experiment
from richrep.representations.floor_check import RandomFloorWarning
from richrep.runtime.threads import ThreadBudget
from richrep.stages.entry import Counter, entry_work, evaluate_entry
from richrep.training.workers import train_group

FLOOR = "its features are not clearly better than its untrained encoder's"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- off a terminal: a line when a task starts, then at most one a minute --------------------


def test_off_a_terminal_a_task_writes_at_most_one_line_a_minute():
    clock, lines = Clock(), []
    tick = Ticker(None, clock=clock, write=lines.append)
    tick.plan("eval slow", 1200, "probe fits")
    for i in range(1201):  # a unit every half second: ten minutes
        tick("eval slow", i, 1200)
        clock.t += 0.5
    own = [line for line in lines if line.startswith("eval slow")]
    overall = [line for line in lines if line.startswith("overall")]
    assert own[0] == "eval slow: started (1200 probe fits)"
    assert own[1] == "eval slow: 120/1200 probe fits (10 %), ETA 0:09:00"  # after one minute
    assert len(own) == 1 + 9 and len(overall) == 10  # the evaluate stage logs the entry's end
    assert overall[0] == "overall (eval 0/1): elapsed 0:01:00, ETA 0:09:00"


def test_a_member_starts_and_ends_with_one_line_and_a_reused_one_with_none():
    clock, lines = Clock(), []
    tick = Ticker(None, clock=clock, write=lines.append)
    tick("single-s0", 1, 1)  # finished before this command
    tick.plan("single-s1", 4, "steps")
    for i in range(5):
        tick("single-s1", i, 4)
        clock.t += 1.0
    tick.note("single-s1", epoch=2, epochs=2, loss=0.25)
    tick("single-s1", 4, 4)  # repeated: still one end line
    assert lines == ["single-s1: started (4 steps)", "single-s1: done (4 steps in 4.0 s)"]


def test_a_planned_member_an_engine_only_reports_done_counts_its_planned_steps():
    board = Board(Clock())
    board.plan("single-s0", 18, "steps")
    t = board.update("single-s0", 1, 1)  # the Ray engine reports a member when it returns
    assert (t.done, t.total) == (18, 18) and t.pace(0.0) is None


def test_the_overall_estimate_uses_each_task_pace_and_says_when_some_is_unknown():
    clock = Clock()
    board = Board(clock)
    board.plan("eval a", 100, "probe fits")
    board.plan("eval b", 10, "network steps")
    board.update("eval a", 0, 100)
    clock.t = 10.0
    board.update("eval a", 50, 100)  # 0.2 s per fit
    eta, partial = board.eta()
    assert eta == pytest.approx(10.0) and partial  # eval b has no pace yet: a lower bound
    assert board.overall() == "elapsed 0:00:10, ETA 0:00:10+"
    board.update("eval a", 100, 100)
    board.update("eval b", 0, 10)
    clock.t = 30.0
    board.update("eval b", 5, 10)  # 4 s per step
    assert board.eta() == (pytest.approx(20.0), False)


def test_a_counter_never_passes_an_estimate_and_makes_up_a_short_one():
    seen = []
    c = Counter(lambda task, done, total: seen.append(done), "eval x", 5)
    c.expect(3)
    for _ in range(4):  # one more than estimated: capped
        c(1)
    c.settle()
    c.expect(2)
    c.settle()  # reported nothing: made up
    assert seen == [0, 1, 2, 3, 5]


# -- every protocol's estimate is the work it reports ----------------------------------------


OOD_DATA = {"dataset": "colored_mnist1d", "params": {"base_params": {"num_samples": 800}}}
FT = {"lrs": [0.05], "weight_decays": [0.0], "max_epochs": 2}
SUITE = [
    {"name": "transfer", "sizes": [5, "all"], "draws": 2},
    {"name": "episodes", "protocol": {"few_shot": {"ways": 2, "shots": [1, 3], "episodes": 7}}},
    {"name": "prefixes", "protocol": "truncation"},
    {"name": "ft_init", "sizes": [10], "protocol": {"finetune": {**FT, "mode": "init"}}},
    {"name": "ft_2ft", "sizes": [10], "protocol": {"finetune": {**FT, "head_epochs": 1}}},
    {"name": "heads", "protocol": {"ood": {"steps": 6, "eval_every": 3, "restarts": 1}}},
    {
        "name": "nets",
        "protocol": {
            "ood": {
                "mode": "network",
                "algorithms": ["erm", "vrex"],
                "grid": {"vrex": {"penalty_weight": [10.0]}},
                "steps": 3,
                "restarts": 1,
                "columns": ["single"],
            }
        },
    },
    {"name": "robust", "protocol": "robustness"},
]


@pytest.fixture(scope="module")
def ood_run(tmp_path_factory):
    from conftest import TINY

    cfg = copy.deepcopy(TINY)
    cfg["data"] = OOD_DATA
    cfg["training"]["batch_size"] = 128
    cfg["evaluation"] = {"subsets": 1, "suite": SUITE}
    cfg["runtime"] = {"threads": 1}
    out = tmp_path_factory.mktemp("progress")
    return run_experiment(parse_experiment(cfg), out, only="train", log=lambda m: None)


def test_each_protocol_reports_the_work_it_estimated(ood_run):
    run = ood_run
    reps = run.representations()
    ctx = run.context(reps)
    units, work = {}, {}
    for entry in run.exp.evaluation.suite:
        target, proto = run.target(entry), protocol_of(entry)
        weights, units[entry.name] = entry_work(run, ctx, reps, entry, proto, target)
        done = []
        for rep in reps:
            n: list[int] = []
            proto.evaluate(replace(ctx, advance=n.append), rep, target, entry)
            done.append(sum(n))
        if isinstance(proto, EstimatesWork):
            assert done == weights, entry.name
        else:  # one unit per representation, counted by the stage
            assert done == [0] * len(reps) and weights == [1] * len(reps)
        work[entry.name] = dict(zip((r.id for r in reps), weights, strict=True))
    assert units == {
        "transfer": "probe fits",
        "episodes": "episodes",
        "prefixes": "prefixes",
        "ft_init": "network steps",
        "ft_2ft": "network steps",
        "heads": "steps",
        "nets": "steps",
        "robust": "representations",
    }
    assert set(work["transfer"].values()) == {3}  # sizes 5 (2 draws) and all
    assert set(work["episodes"].values()) == {14}
    single, cat, floor = (
        next(r.id for r in reps if r.column == c) for c in ("single", "cat2", "input")
    )
    assert work["ft_init"][cat] == 2 * work["ft_init"][single] > 0  # two towers per step
    assert work["ft_2ft"][cat] == 0  # its seeds were fine-tuned for the singles
    assert work["heads"][single] == 6 and work["nets"][single] == 2 * 3
    assert work["ft_init"][floor] == work["nets"][cat] == 0  # no network; not asked for


def test_the_stage_counts_an_entry_in_its_units_to_the_end(ood_run, tmp_path):
    run = ood_run
    reps = run.representations()
    calls: list[tuple[str, int, int]] = []
    for entry in run.exp.evaluation.suite[:3] + run.exp.evaluation.suite[-1:]:
        path = tmp_path / f"{entry.name}.jsonl"
        evaluate_entry(
            run,
            run.context(reps),
            reps,
            entry,
            path,
            log=lambda m: None,
            progress=lambda *c: calls.append(c),
        )
        mine = [(d, t) for task, d, t in calls if task == f"eval {entry.name}"]
        assert [d for d, _ in mine] == sorted({d for d, _ in mine})  # never back, never twice
        assert mine[0][0] == 0 and mine[-1][0] == mine[-1][1] == mine[0][1]
    assert calls[-1] == ("eval robust", len(reps), len(reps))


# -- training: epoch and loss on the bars; the stage's last line -----------------------------


def test_member_bars_show_the_epoch_and_the_last_loss(tiny, tmp_path):
    tiny["runtime"] = {"threads": 1}
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with Progress(console=console) as bar:
        tick = Ticker(bar)
        run_experiment(parse_experiment(tiny), tmp_path, only="train", progress=tick, log=tick.log)
    described = {t.description for t in bar.tasks}
    assert {d.split(" · ")[0] for d in described} == {"overall", "single-s0", "single-s1"}
    for d in described - {"overall"}:
        assert re.fullmatch(r"single-s\d · epoch 2/2 · loss \d\.\d+", d), d
    steps = 2 * 6  # two epochs of the 364 training examples in batches of 64
    assert all(t.completed == t.total == steps for t in bar.tasks if t.description != "overall")


@pytest.mark.parametrize(
    "strategy",
    [
        "sequential",
        "threads",
        "fused",
        "fused-threads",
        pytest.param("processes", marks=pytest.mark.slow),
    ],
)
def test_every_strategy_reports_each_epoch_loss(strategy):
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g))
    models = [
        Classifier(build_encoder("mlp", (1, 6, 6), hidden=[8], feature_dim=4), 3) for _ in range(2)
    ]
    epochs: list[tuple[int, int, int]] = []
    train_group(
        models,
        data,
        TrainingConfig(epochs=2, batch_size=32, lr=0.05, precision="fp32"),
        [0, 1],
        device=torch.device("cpu"),
        dtype=torch.float32,
        budget=ThreadBudget(1),
        strategy=strategy,
        workers=2,
        on_epoch=lambda k, e, n, loss: epochs.append((k, e, n)) if loss > 0 else None,
    )
    assert sorted(epochs) == [(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2)]


def test_the_last_line_says_trained_reused_and_imported(tiny, tmp_path):
    tiny["runtime"] = {"threads": 1}
    logs: list[str] = []
    first = run_experiment(parse_experiment(tiny), tmp_path, only="train", log=logs.append)
    run_experiment(parse_experiment(tiny), tmp_path, only="train", log=logs.append)
    paths = [str(first.ledger.final(f"single-s{i}")) for i in (0, 1)]
    tiny["training"]["seeds"] = {"from_checkpoints": paths}
    run_experiment(parse_experiment(tiny), tmp_path, only="train", log=logs.append)
    run_experiment(parse_experiment(tiny), tmp_path, only="train", log=logs.append)
    last = [line for line in logs if " members in " in line]
    assert [re.sub(r" in [\d.]+ s$", "", line) for line in last] == [
        "trained 2 members",
        "reused 2 members",
        "imported 2 members",  # imported by this invocation
        "imported 2 members",  # imported by an earlier one
    ]


# -- each warning once ------------------------------------------------------------------------


def test_a_floor_warning_is_printed_once_on_one_line_by_the_cli(tiny, tmp_path):
    tiny["runtime"] = {"threads": 1}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    r = CliRunner().invoke(app, ["run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for seed in ("single-s0", "single-s1"):  # the tiny run's seeds barely beat the floor
        assert r.output.count(f"{seed}: {FLOOR}") == 1, r.output
        assert f"warning: {seed}: {FLOOR}" in r.output
    assert "warnings.warn(" not in r.output and "WARNING" not in r.output
    assert "trained 2 members in" in r.output


def test_the_python_api_warns_once_at_the_callers_line(tiny, tmp_path):
    tiny["runtime"] = {"threads": 1}
    logs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_experiment(parse_experiment(tiny), tmp_path, log=logs.append)
    floor = [w for w in caught if issubclass(w.category, RandomFloorWarning)]
    assert sorted(str(w.message).split(":")[0] for w in floor) == ["single-s0", "single-s1"]
    assert {w.filename for w in floor} == {__file__}  # the user's line, not richrep's
    assert not any(FLOOR in line for line in logs)
