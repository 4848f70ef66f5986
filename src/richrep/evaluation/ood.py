"""The ``ood`` protocol: out-of-distribution algorithms on top of a representation, on a target
with environments (e.g. ``colored_fashion_mnist``), as in Zhang & Bottou (ICML 2023, § 4:
"rich representations help out-of-distribution algorithms") and Zhang, Lopez-Paz & Bottou
(ICML 2022, RFC, Table 1).

Each algorithm (an objective: ``erm``, ``irm``, ``vrex``, ``group_dro``, ``fishr``, or any
registered one) is trained, for every setting of its ``grid`` and ``restarts`` restarts, either

- ``mode: head`` — as a linear head on the frozen features (standardized with the training
  split's statistics; the paper's Camelyon17 heads), or
- ``mode: network`` — the representation's network(s) (catK: the K towers side by side) and a
  new head trained end to end, starting from the trained weights; the ``random`` floor is
  then a network trained from a random initialization (RFC's "random init" column).

**Model selection** (DomainBed, Gulrajani & Lopez-Paz 2021; both reported, as ``variant``
``<algorithm> · train-domain`` and ``<algorithm> · oracle``): every ``eval_every`` steps the
model is scored; per restart, the (setting, step) with the best accuracy on the held-out part
of the training environments (the target's validation split) is chosen by the
*training-domain* rule, which never reads a test label; the *oracle* rule chooses by the
worst test-environment accuracy on an ``oracle_fraction`` slice of the test examples (the same
image positions in every test environment). Both rules report on the remaining test examples.

Rows (``draw`` = restart, ``size`` = all): ``accuracy`` per test environment
(``environment``), ``worst_env_accuracy``, ``average_accuracy`` (over test environments),
``worst_group_accuracy`` (over the groups of the test environments) and ``train_env_accuracy``
(the held-out training-environment accuracy); ``extra`` records the algorithm, rule, setting
and step chosen.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Split, Task
from richrep.data.splits import rng
from richrep.errors import ConfigError
from richrep.evaluation.finetune_train import network
from richrep.evaluation.ood_train import Scorer, train_heads, train_network
from richrep.evaluation.protocols import Context
from richrep.objectives import build_objective
from richrep.plugins import OBJECTIVES, PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row
from richrep.runtime.cpu_policy import probe_compute_policy

ALIASES = {"erm": "cross_entropy"}
PENALTIES = [1e3, 1e4, 1e5]  # RFC's released range for the penalty weights
DEFAULT_GRID: dict[str, dict[str, list[Any]]] = {
    "irm": {"penalty_weight": PENALTIES},
    "vrex": {"penalty_weight": PENALTIES},
    "fishr": {"penalty_weight": PENALTIES},
    "group_dro": {"eta": [0.01, 0.1, 1.0]},
}
RULES = ("train-domain", "oracle")
METRICS = (
    "accuracy",
    "worst_env_accuracy",
    "average_accuracy",
    "worst_group_accuracy",
    "train_env_accuracy",
)


@PROTOCOLS.register(
    "ood",
    metrics=METRICS,
    vs_k=False,  # rows are per algorithm and rule: the report's OOD section draws them
    description="OOD algorithms (ERM, IRM, vREx, GroupDRO, Fishr) as heads or whole networks",
)
class OOD:
    """Out-of-distribution algorithms trained on a representation over the target's training
    environments, selected by training-domain validation and by the test-domain oracle,
    scored per test environment, worst environment and worst group.

    ``algorithms``: objective names (``erm`` is ``cross_entropy``); ``grid``: per algorithm,
    argument -> values tried (default: penalty weights 1e3, 1e4, 1e5 for irm, vrex and
    fishr, eta 0.01, 0.1, 1 for group_dro); ``steps``, ``lr``, ``l2``, ``anneal_steps``:
    full-batch Adam, the RFC recipe (lr 5e-4, L2 0.0011); ``eval_every``: the step grid
    selection chooses from; ``restarts``; ``batch_size``: minibatches for ``network`` mode
    (default: full batch); ``columns``: only these table columns or representation ids."""

    def __init__(
        self,
        algorithms: Annotated[list[str], Field(min_length=1)] = [  # noqa: B006
            "erm",
            "irm",
            "vrex",
            "group_dro",
            "fishr",
        ],
        grid: dict[str, dict[str, list[Any]]] | None = None,
        mode: Literal["head", "network"] = "head",
        steps: Annotated[int, Field(ge=1)] = 1001,
        lr: Annotated[float, Field(gt=0)] = 5e-4,
        l2: Annotated[float, Field(ge=0)] = 0.0011,
        anneal_steps: Annotated[int, Field(ge=0)] = 100,
        eval_every: Annotated[int, Field(ge=1)] = 100,
        restarts: Annotated[int, Field(ge=1)] = 5,
        oracle_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
        batch_size: Annotated[int, Field(ge=1)] | None = None,
        columns: list[str] | None = None,
    ) -> None:
        self.algorithms = list(dict.fromkeys(algorithms))
        grid = {**DEFAULT_GRID, **(grid or {})}
        unknown = sorted(set(grid) - set(self.algorithms) - set(DEFAULT_GRID))
        if unknown:
            raise ConfigError(f"ood: grid names {unknown}, which are not in algorithms")
        self.settings = {a: settings(a, grid.get(a, {}), anneal_steps) for a in self.algorithms}
        self.mode, self.steps, self.lr, self.l2 = mode, steps, lr, l2
        self.eval_every, self.restarts = eval_every, restarts
        self.oracle_fraction, self.batch_size, self.columns = oracle_fraction, batch_size, columns

    unit = "steps"

    def work(self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> int:
        """Steps of training: all heads of a representation train together in ``head`` mode;
        each (algorithm, setting, restart) is a network of its own in ``network`` mode."""
        if not self.wanted(rep):
            return 0
        if self.mode == "head":
            return self.steps
        return sum(len(s) for s in self.settings.values()) * self.restarts * self.steps

    # -- checks -----------------------------------------------------------------------------
    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        at = f"suite entry {entry.name!r}: ood"
        for name, s in (("train", target.train), ("val", target.val), ("test", target.test)):
            if s.env is None:
                raise ConfigError(
                    f"{at} needs environments, and the target's {name} split has none: use a "
                    f"dataset or shift that makes them (colored_fashion_mnist, colored_mnist1d, "
                    f"the `colored` shift)"
                )
        if len(torch.unique(target.train.env)) < 2 and any(
            a != "erm" and a != "cross_entropy" for a in self.algorithms
        ):
            raise ConfigError(f"{at}: the training split holds one environment; need two or more")

    def wanted(self, rep: Representation) -> bool:
        if self.mode == "network" and "input" in rep.parts:
            return False  # the input floor has no network
        return rep.chosen(self.columns)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        if not self.wanted(rep):
            return []
        self.check(entry, ctx.source, target)
        score, report = self.scorer(ctx, target, entry)
        if self.mode == "head":
            records = self.heads(ctx, rep, target, score)
        else:
            records = self.networks(ctx, rep, target, entry, score)
        rows = []
        for alg in self.algorithms:
            for rule in RULES:
                for r in range(self.restarts):
                    s, rec = select(records[alg], r, self.restarts, rule, report["oracle"])
                    rows += self.rows(ctx, entry, rep, target, report, alg, rule, r, s, rec)
        return rows

    def scorer(self, ctx: Context, target: Task, entry: SuiteEntry) -> tuple[Scorer, dict]:
        """The slices every head is scored on (made once per target and entry)."""
        key = f"ood|{target.hash}|{entry.name}|{self.oracle_fraction}"
        if key not in ctx.fitted:
            ctx.fitted[key] = slices(target, self.oracle_fraction, ctx.seed, entry.name)
        return ctx.fitted[key]

    def heads(
        self, ctx: Context, rep: Representation, target: Task, score: Scorer
    ) -> dict[str, list[list[dict]]]:
        """Records of every (setting, restart) head of every algorithm, ``[alg][s * R + r]``."""
        f = {n: ctx.featurizer(rep, s).float() for n, s in target.splits().items()}
        mu = f["train"].mean(0)
        sd = f["train"].std(0)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        f = {n: (v - mu) / sd for n, v in f.items()}
        train = Split(f["train"], target.train.y, target.train.groups, target.train.env)
        objs, seeds, owners = [], [], []
        for alg in self.algorithms:  # every algorithm's heads train together: one graph
            for i, (_, params) in enumerate(self.settings[alg]):
                objs.append(build_objective(ALIASES.get(alg, alg), params))
                seeds.append([(ctx.seed, rep.id, alg, i, r) for r in range(self.restarts)])
                owners += [alg] * self.restarts
        work = len(train) * max(train.x.shape[1], 1) * len(owners)
        with probe_compute_policy(work, torch.device("cpu"), "float32"):
            records = train_heads(
                train,
                f["val"],
                f["test"],
                objs,
                seeds,
                score,
                steps=self.steps,
                lr=self.lr,
                l2=self.l2,
                eval_every=self.eval_every,
                on_step=lambda: ctx.advance(1),
            )
        out: dict[str, list[list[dict]]] = {alg: [] for alg in self.algorithms}
        for alg, rec in zip(owners, records, strict=True):
            out[alg].append(rec)
        return out

    def networks(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry, score: Scorer
    ) -> dict[str, list[list[dict]]]:
        run = ctx.run_of(entry, "ood with mode network trains the run's networks, so it")
        out = {}
        for alg in self.algorithms:
            out[alg] = []
            for i, (_, params) in enumerate(self.settings[alg]):
                for r in range(self.restarts):
                    where = (ctx.seed, entry.name, rep.id, alg, i, r)
                    model = network(run, rep.parts, target.num_classes, "ood", *where)
                    out[alg].append(
                        train_network(
                            model,
                            target.train,
                            target.val,
                            target.test,
                            build_objective(ALIASES.get(alg, alg), params),
                            where,
                            score,
                            steps=self.steps,
                            lr=self.lr,
                            l2=self.l2,
                            eval_every=self.eval_every,
                            batch_size=self.batch_size,
                            device=run.device,
                            dtype=run.dtype,
                            on_step=lambda: ctx.advance(1),
                        )
                    )
        return out

    def rows(
        self,
        ctx: Context,
        entry: SuiteEntry,
        rep: Representation,
        target: Task,
        report: dict,
        alg: str,
        rule: str,
        restart: int,
        setting: int,
        rec: dict,
    ) -> list[Row]:
        label, params = self.settings[alg][setting]
        extra = {
            "algorithm": alg,
            "selection": rule,
            "setting": label,
            **{f"setting_{k}": v for k, v in params.items() if k != "anneal_steps"},
            "step": rec["step"],
            "mode": self.mode,
        }
        common = {
            "size": "all",
            "draw": restart,
            "train_n": len(target.train),
            "variant": f"{alg} · {rule}",
            "extra": extra,
        }
        envs = [rec[f"report:{e}"] for e in report["envs"]]
        n_env = report["counts"]
        out = [
            ctx.row(entry, rep, "accuracy", a, n_env[e], environment=e, **common)
            for e, a in zip(report["envs"], envs, strict=True)
        ]
        n_all = sum(n_env.values())
        groups = [rec[k] for k in report["groups"]]
        out += [
            ctx.row(entry, rep, "worst_env_accuracy", min(envs), n_all, **common),
            ctx.row(entry, rep, "average_accuracy", float(np.mean(envs)), n_all, **common),
            ctx.row(entry, rep, "worst_group_accuracy", min(groups), n_all, **common),
            ctx.row(entry, rep, "train_env_accuracy", rec["val"], len(target.val), **common),
        ]
        return out


def settings(alg: str, grid: dict[str, list[Any]], anneal_steps: int) -> list[tuple[str, dict]]:
    """(label, objective arguments) of every setting of ``alg``'s grid (the product of its
    lists), each checked against the objective's signature; penalty objectives get the
    protocol's ``anneal_steps``."""
    name = ALIASES.get(alg, alg)
    if name not in OBJECTIVES:
        OBJECTIVES.entry(name)  # raises naming the choices
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        params = dict(zip(keys, values, strict=True))
        accepted = {p.name for p in OBJECTIVES.entry(name).params()}
        if "anneal_steps" in accepted and "anneal_steps" not in params:
            params["anneal_steps"] = anneal_steps
        OBJECTIVES.validate(name, params, where=f"ood grid of {alg}")
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, values, strict=True))
        out.append((label or "default", params))
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def slices(target: Task, fraction: float, seed: int, name: str) -> tuple[Scorer, dict]:
    """The scorer of a target with environments, and what the rows need to know of it: the
    test environments' names, the oracle slice (the same positions within each environment)
    and the report slice per environment and per group."""
    info = target.recipe.get("info") or {}
    env_names = {e["id"]: e["name"] for e in info.get("environments", [])}
    group_names = dict(enumerate(info.get("groups", [])))
    env = target.test.env
    rank = torch.zeros_like(env)
    for e in torch.unique(env).tolist():
        m = env == e
        rank[m] = torch.arange(int(m.sum()))
    n_max = int(rank.max()) + 1
    pick = rng(seed, "ood-oracle", name).permutation(n_max)[: max(1, round(fraction * n_max))]
    oracle = torch.zeros(n_max, dtype=torch.bool)
    oracle[torch.as_tensor(pick)] = True
    oracle = oracle[rank]
    rows, names, counts = [], [], {}
    env_ids = torch.unique(env).tolist()
    for part, mask in (("oracle", oracle), ("report", ~oracle)):
        for e in env_ids:
            label = env_names.get(e, f"env {e}")
            sel = (env == e) & mask
            if not bool(sel.any()):
                raise ConfigError(f"ood: test environment {label!r} has no {part} examples")
            rows.append(sel)
            names.append(f"{part}:{label}")
            if part == "report":
                counts[label] = int(sel.sum())
    env_labels = [env_names.get(e, f"env {e}") for e in env_ids]
    group_keys = [f"report:{e}" for e in env_labels]  # without groups: the environments
    if target.test.groups is not None:
        group_keys = []
        for g in torch.unique(target.test.groups).tolist():
            sel = (target.test.groups == g) & ~oracle
            if bool(sel.any()):
                rows.append(sel)
                names.append(f"group:{group_names.get(g, f'group {g}')}")
                group_keys.append(names[-1])
    score = Scorer(target.val.y, target.test.y, torch.stack(rows).double(), names)
    report = {
        "envs": env_labels,
        "oracle": [f"oracle:{e}" for e in env_labels],
        "groups": group_keys,
        "counts": counts,
    }
    return score, report


def select(
    records: list[list[dict]], restart: int, n_restarts: int, rule: str, oracle_keys: list[str]
) -> tuple[int, dict]:
    """The (setting, record) chosen for ``restart`` (records are ``[s * R + r]``, each a list
    over evaluation steps): ``train-domain`` by the held-out training-environment accuracy
    (never a test label), ``oracle`` by the worst oracle-slice test-environment accuracy; ties
    go to the earlier setting, then the earlier step."""
    best: tuple[float, int, dict] | None = None
    for i in range(restart, len(records), n_restarts):
        for rec in records[i]:
            value = rec["val"] if rule == "train-domain" else min(rec[k] for k in oracle_keys)
            if best is None or value > best[0]:
                best = (value, i // n_restarts, rec)
    assert best is not None
    return best[1], best[2]
