"""The ``domain_generalization`` protocol: a pre-trained network (the run's, or a user's weights
file through ``model.pretrained``) fine-tuned on a target's training domains and tested on a
domain it never saw — DomainBed's leave-one-domain-out (Gulrajani & Lopez-Paz, ICLR 2021) —
by each method of ``DG_METHODS`` (ERM, deep ensembles, uniform and greedy soups, DiWA, very
large dropout, LP-FT, [2ft]cat).

The target needs domains (``Split.env``: e.g. the ``rotated_domains`` dataset). For each test
domain (``test_domains``, default all) and each of ``trials`` trials, the methods train on the
other domains' training examples; the K runs of a family (ERM's: ``k`` restarts, data orders
differing, from one head initialization so that their weights may be averaged) are trained
once and shared by every method that reads them (finetune, ensemble, soups, cat_2ft), so
ensembles and soups add no training, and all K runs' predictions on a split are computed in
one pass over it.

**Selection** (both reported, DomainBed's two rules, ``variant`` ``<method> · <rule>``): each
run is scored after every epoch; *training-domain validation* keeps the epoch best on the
training domains' held-out examples (the target's validation split: 20 % of each domain in
``rotated_domains``), the greedy soup orders and accepts ingredients on the same; the
*test-domain oracle* uses the test domain's held-out examples instead. Both report on the test
domain's test examples, which no choice reads.

Rows: ``accuracy`` per test domain (``environment``) and their ``average`` (environment
``average``), ``draw`` = the restart for one-network methods (finetune, large_dropout, lp_ft:
the mean over draws is the single network's), the trial for the others; soups and DiWA add
``midpoint_accuracy`` (the network halfway between two runs: linear mode connectivity).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.errors import ConfigError, DataError
from richrep.evaluation.dg.job import DGJob, Outcome, Recipe, leave_one_out_slices
from richrep.evaluation.protocols import Context
from richrep.plugins import DG_METHODS, FLOORS, PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row

METHODS = (
    "finetune",
    "ensemble",
    "uniform_soup",
    "greedy_soup",
    "diwa",
    "large_dropout",
    "lp_ft",
    "cat_2ft",
)
MethodSpec = str | dict[str, dict[str, Any]]


@PROTOCOLS.register(
    "domain_generalization",
    metrics=("accuracy", "midpoint_accuracy"),
    vs_k=False,
    description="leave-one-domain-out fine-tuning: ERM, ensembles, soups, DiWA, dropout, LP-FT",
)
class DomainGeneralization:
    """Leave-one-domain-out with the pre-trained network: for each held-out domain, fine-tune
    on the others by each method of ``methods`` (names or ``{name: {arg: value}}``), selected
    by training-domain validation and by the test-domain oracle.

    ``k``: runs per family (ensembles and soups of K); ``trials``: repeats of everything with
    other seeds; ``epochs``, ``lr``, ``weight_decay``, ``batch_size``: the fine-tuning recipe
    (SGD, momentum 0.9, cosine); ``lp_epochs``, ``lp_lr``: the linear probe that starts DiWA and
    LP-FT; ``test_domains``: names of the domains held out (default all);
    ``shared_head_init``: ERM's runs start from one head (needed by soups); ``columns``:
    representations evaluated (default: the first single network)."""

    def __init__(
        self,
        methods: Annotated[list[MethodSpec], Field(min_length=1)] = list(METHODS),  # noqa: B006
        k: Annotated[int, Field(ge=2, le=64)] = 5,
        trials: Annotated[int, Field(ge=1, le=100)] = 1,
        epochs: Annotated[int, Field(ge=1, le=1000)] = 3,
        lr: Annotated[float, Field(gt=0, le=10)] = 0.01,
        weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0,
        batch_size: Annotated[int, Field(ge=1)] = 64,
        lp_epochs: Annotated[int, Field(ge=1, le=1000)] = 5,
        lp_lr: Annotated[float, Field(gt=0, le=10)] = 0.01,
        test_domains: list[str] | None = None,
        shared_head_init: bool = True,
        columns: list[str] | None = None,
    ) -> None:
        self.methods = [self._method(m) for m in methods]
        names = [n for n, _, _ in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"domain_generalization: methods {dup} are listed twice")
        if not shared_head_init:
            soups = [n for n in names if DG_METHODS.meta(n, "averages", False)]
            if soups:
                raise ConfigError(
                    f"domain_generalization: {soups} average the weights of the K runs, which "
                    f"needs them to start from one initialization; shared_head_init: false "
                    f"gives each run its own head. Drop those methods or share the head"
                )
        self.k, self.trials = k, trials
        self.recipe = Recipe(float(lr), float(weight_decay), epochs, batch_size)
        self.lp = Recipe(float(lp_lr), 0.0, lp_epochs, batch_size)
        self.test_domains, self.shared, self.columns = test_domains, shared_head_init, columns

    @staticmethod
    def _method(spec: MethodSpec) -> tuple[str, dict[str, Any], Any]:
        if isinstance(spec, dict):
            if len(spec) != 1:
                raise ConfigError(
                    f"domain_generalization: a method is a name or {{name: {{arg: value}}}}, "
                    f"got {spec}"
                )
            ((name, params),) = spec.items()
        else:
            name, params = spec, {}
        where = f"domain_generalization method {name!r}"
        params = DG_METHODS.validate(name, params or {}, where=where)
        return name, params, DG_METHODS.build(name, where=where, **params)

    # -- checks -----------------------------------------------------------------------------
    def domains(self, target: Task) -> dict[int, str]:
        """Domain id -> name of the target (from ``recipe["info"]["environments"]``)."""
        info = target.recipe.get("info") or {}
        named = {int(e["id"]): str(e["name"]) for e in info.get("environments", [])}
        assert target.train.env is not None
        ids = sorted(set(torch.unique(target.train.env).tolist()))
        return {i: named.get(i, f"domain {i}") for i in ids}

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        at = f"suite entry {entry.name!r}: domain_generalization"
        for name, s in target.splits().items():
            if s.env is None:
                raise ConfigError(
                    f"{at} needs domains, and the target's {name} split has none: use a dataset "
                    f"that makes them (rotated_domains, image_folder with domain folders, an npz "
                    f"with env)"
                )
        doms = self.domains(target)
        if len(doms) < 2:
            raise ConfigError(
                f"{at}: the target holds a single domain ({list(doms.values())}); "
                f"leave-one-domain-out needs two or more (one to test, the others to train)"
            )
        for split in ("train", "test"):
            s = target.splits()[split]
            for d, name in doms.items():
                have = set(torch.unique(s.y[s.env == d]).tolist())
                missing = sorted(set(range(target.num_classes)) - have)
                if missing:
                    labels = [target.class_names[c] for c in missing][:8]
                    raise DataError(
                        f"{at}: domain {name!r} has no {split} examples of class(es) {labels}; "
                        f"every domain needs examples of every class"
                    )
        if self.test_domains is not None:
            unknown = sorted(set(self.test_domains) - set(doms.values()))
            if unknown:
                raise ConfigError(
                    f"{at}: test_domains {unknown} are not domains of the target "
                    f"({list(doms.values())})"
                )

    def wanted(self, rep: Representation) -> bool:
        """One pre-trained network: by default the first single network; ``columns`` picks."""
        if rep.kind in FLOORS or len(rep.parts) != 1 or rep.parts[0] == "input":
            return False
        if self.columns is not None:
            return rep.chosen(self.columns)
        return rep.kind == "single" and rep.seeds == (0,)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        if not self.wanted(rep):
            return []
        self.check(entry, ctx.source, target)
        run = ctx.run_of(entry, "domain_generalization fine-tunes the run's network, so it")
        doms = self.domains(target)
        held = [d for d, n in doms.items() if self.test_domains is None or n in self.test_domains]
        rows: list[Row] = []
        for trial in range(self.trials):
            per: dict[tuple, list[Row]] = defaultdict(list)
            for d in held:
                slices = leave_one_out_slices(target, d, doms[d])
                job = DGJob(
                    run,
                    rep.parts,
                    target.num_classes,
                    slices,
                    k=self.k,
                    recipe=self.recipe,
                    lp=self.lp,
                    where=(ctx.seed, entry.name, rep.id, d, trial),
                    shared_init=self.shared,
                )
                for name, params, method in self.methods:
                    for o in method.evaluate(job):
                        row = self.row(ctx, entry, rep, job, name, params, o, trial)
                        rows.append(row)
                        per[(row.variant, row.metric, row.draw)].append(row)
            rows += [self.average(ctx, entry, rep, group) for group in per.values()]
        return rows

    def label(self, name: str) -> str:
        return str(DG_METHODS.meta(name, "label", name)).format(k=self.k)

    def row(
        self,
        ctx: Context,
        entry: SuiteEntry,
        rep: Representation,
        job: DGJob,
        name: str,
        params: dict[str, Any],
        o: Outcome,
        trial: int,
    ) -> Row:
        s = job.slices
        one = not DG_METHODS.meta(name, "averages", False) and o.extra.get("epoch") is not None
        draw = trial * self.k + o.draw if one else trial
        extra = {
            "method": name,
            "selection": o.rule,
            "test_domain": s.name,
            "trial": trial,
            "k": self.k,
            "method_params": params,
            **o.extra,
        }
        return ctx.row(
            entry,
            rep,
            o.metric,
            o.value,
            len(s.test),
            size="all",
            draw=draw,
            train_n=len(s.train),
            environment=s.name,
            variant=f"{self.label(name)} · {o.rule}",
            extra=extra,
        )

    def average(self, ctx: Context, entry: SuiteEntry, rep: Representation, rows: list[Row]) -> Row:
        """The mean over test domains of one (method, rule, metric, draw)."""
        r0 = rows[0]
        extra = {k: r0.extra[k] for k in ("method", "selection", "trial", "k", "method_params")}
        extra["domains"] = [r.environment for r in rows]
        return ctx.row(
            entry,
            rep,
            r0.metric,
            float(np.mean([r.value for r in rows])),
            sum(r.n for r in rows),
            size="all",
            draw=r0.draw,
            train_n=None,
            environment="average",
            variant=r0.variant,
            extra=extra,
        )


__all__ = ["METHODS", "DomainGeneralization"]
