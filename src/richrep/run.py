"""A run: one experiment and its folder — the object every stage takes, and the public API to
a run's encoders and features (``richrep.open_run``)::

    run = richrep.open_run("runs/quickstart-1a2b3c4d5e")
    run.representations()                      # single, cat2…, wide5, distill5, floors
    X = run.features("cat5", test_split)       # cached on disk in the run folder
    rows = run.evaluate(target, protocol="transfer", sizes=[10, "all"])
    run.evaluate({"name": "mine", "dataset": "npz", "params": {"path": "mine.npz"}}, save=True)
    run.results()                              # a pandas DataFrame of the tidy rows
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from richrep.analysis.advise import Advice, MemberCost, advise
from richrep.analysis.budget import parse_budget
from richrep.config import Experiment, SuiteEntry, entries, load_experiment
from richrep.data import Split, Task, apply_shifts, load_task
from richrep.data.checks import ValueStats, value_stats
from richrep.errors import ConfigError, DataError, StoreError
from richrep.evaluation import stored
from richrep.evaluation.protocols import Context, protocol_of
from richrep.members import Member, kind_of, plan_members
from richrep.plugins import PROTOCOLS
from richrep.representations import (
    Representation,
    Trained,
    build_floors,
    plan_representations,
)
from richrep.representations.features import FeatureCache, Featurizer, Flatten
from richrep.results import Row
from richrep.results.frame import results_frame
from richrep.runtime.device import resolve_device, resolve_precision
from richrep.store import RunStore, read_jsonl
from richrep.store.ledger import Ledger, Status
from richrep.training.checkpoint import load_checkpoint


def base_task(exp: Experiment) -> Task:
    """The experiment's dataset, split (train / validation / test) by its seed."""
    d = exp.data
    return load_task(
        d.dataset,
        d.params,
        val_fraction=d.val_fraction,
        max_train_per_class=d.max_train_per_class,
        seed=exp.seed,
    )


def source_task(exp: Experiment, base: Task | None = None) -> Task:
    """The task the members train on: the dataset with the ``data.source`` shifts applied."""
    base = base if base is not None else base_task(exp)
    return apply_shifts(base, [s.as_tuple() for s in exp.data.source], where="data.source")


class Run:
    """An experiment and its run folder: tasks, planned members and their ledger, encoders,
    representations and features."""

    def __init__(self, exp: Experiment, store: RunStore) -> None:
        self.exp = exp
        self.store = store
        self.ledger = Ledger(store)
        self._encoders: dict[str, nn.Module] = {}
        self.extras = entries.ExtrasFile(store.extra_entries)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, exp: Experiment, out: Path) -> Run:
        """The run of ``exp`` under the folder ``out`` (``out/<name>-<hash>``)."""
        out = Path(out)
        store = RunStore(out / exp.run_id())
        if store.root.resolve().parent != out.resolve():
            raise StoreError(f"run name {exp.name!r} would leave the output directory {out}")
        if store.exists():
            store.check_format()
        return cls(exp, store)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run folder."""
        store = RunStore(Path(path))
        if not store.exists():
            raise StoreError(f"{path} is not a richrep run folder (no config.yaml)")
        store.check_format()
        return cls(load_experiment(store.config), store)

    # -- entries ------------------------------------------------------------------------------
    @property
    def extra_entries(self) -> list[SuiteEntry]:
        """Suite entries added to the run after its experiment (``richrep evaluate RUN --entry``,
        ``evaluate(..., save=True)``), kept in the run folder's ``extra_entries.yaml``."""
        return self.extras.read(self.exp)

    @property
    def suite(self) -> list[SuiteEntry]:
        """The run's entries: the experiment's suite, then the extra entries it does not name."""
        return entries.merge_suite(self.exp.evaluation.suite, self.extra_entries)[0]

    # -- data ---------------------------------------------------------------------------------
    @cached_property
    def base_task(self) -> Task:
        return base_task(self.exp)

    @cached_property
    def source_task(self) -> Task:
        """The task the members train on: the dataset with the ``data.source`` shifts applied."""
        return source_task(self.exp, self.base_task)

    @cached_property
    def source_stats(self) -> ValueStats:
        """Mean, std and largest magnitude of the source's training inputs."""
        return value_stats(self.source_task.train.x)

    def target(self, entry: SuiteEntry, base: Task | None = None) -> Task:
        """A suite entry's target: the run's dataset (or the entry's own ``dataset``) with the
        entry's shifts applied; its inputs must fit the encoders."""
        where = entries.entry_where(
            entry, self.exp.evaluation.suite, self.extra_entries, self.store
        )
        if entry.dataset is not None:
            try:
                task = load_task(
                    entry.dataset,
                    entry.params,
                    val_fraction=self.exp.data.val_fraction,
                    seed=self.exp.seed,
                    like=self.source_task,
                )
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
        else:
            task = base if base is not None else self.base_task
        task = apply_shifts(task, [s.as_tuple() for s in entry.shifts], where=where)
        if task.input_shape != self.source_task.input_shape:
            raise DataError(
                f"{where}: the target's inputs have shape {task.input_shape} but the run's "
                f"encoders take {self.source_task.input_shape}"
                + entries.kind_hint(entry, self.source_task.input_shape)
            )
        return task

    # -- members ------------------------------------------------------------------------------
    @cached_property
    def members(self) -> list[Member]:
        return plan_members(self.exp, self.source_task.input_shape)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigError(
            f"{self.store.root} has no member {name!r}; it has {[m.name for m in self.members]}"
        )

    def statuses(self) -> dict[str, Status]:
        return self.ledger.statuses([m.name for m in self.members])

    def checkpoint_sha(self, name: str) -> str:
        """The sha256 of member ``name``'s checkpoint ("" when it has none)."""
        return str(self.ledger.status(name).meta.get("sha256", ""))

    def trained(self) -> list[Trained]:
        """The finished members, as the representations see them."""
        out = []
        for m in self.members:
            s = self.ledger.status(m.name)
            if s.ok:
                out.append(
                    Trained(
                        m.name,
                        m.kind,
                        m.k,
                        m.seed,
                        int(s.meta["feature_dim"]),
                        int(s.meta["encoder_params"]),
                        kind_of(m).tag(m),
                    )
                )
        return out

    # -- encoders and features ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return resolve_device(self.exp.runtime.evaluation_device)

    @property
    def dtype(self) -> torch.dtype:
        return resolve_precision(self.exp.training.precision, self.device)

    def classifier(self, name: str, trained: bool = True) -> nn.Module:
        """Member ``name``'s whole network (encoder and heads), in eval mode: trained (checked
        against its sha256) or, with ``trained=False``, as initialized from its seed."""
        member = self.member(name)
        model = kind_of(member).build(member, self.exp, self.source_task)
        if trained:
            status = self.ledger.status(name)
            if not status.ok:
                raise StoreError(
                    f"member {name} is {status.state.value}"
                    f"{': ' + status.error if status.error else ''}; run `richrep run` to train it"
                )
            load_checkpoint(self.ledger.final(name), model)
        return model.eval()

    def encoder(self, part: str) -> nn.Module:
        """The encoder of a representation part: a trained member (``single-s0``), an
        untrained one (``random-single-s0``: same seed, no training) or the raw ``input``."""
        if part not in self._encoders:
            if part == "input":
                enc: nn.Module = Flatten()
            else:
                name = part.removeprefix("random-")
                enc = self.classifier(name, trained=name == part).encoder.eval()
            self._encoders[part] = enc
        return self._encoders[part]

    def encoders(self) -> dict[str, nn.Module]:
        """The trained encoder of every finished member, by member name."""
        return {t.name: self.encoder(t.name) for t in self.trained()}

    @cached_property
    def featurizer(self) -> Featurizer:
        directory = self.store.features if self.exp.evaluation.cache_features else None
        fingerprints = {}
        for t in self.trained():
            fingerprints[t.name] = self.checkpoint_sha(t.name)
            fingerprints[f"random-{t.name}"] = "init" + self.exp.run_hash()
        return Featurizer(
            self.encoder,
            device=self.device,
            dtype=self.dtype,
            cache=FeatureCache(directory=directory),
            fingerprints=fingerprints,
        )

    def representations(self) -> list[Representation]:
        floors = build_floors(self.exp.evaluation.floors)
        input_dim = int(np.prod(self.source_task.input_shape))
        return plan_representations(
            self.trained(),
            subsets=self.exp.evaluation.subsets,
            seed=self.exp.seed,
            floors=floors,
            floor_context={"input_dim": input_dim},
        )

    def representation(self, name: str | Representation) -> Representation:
        """A representation by column (``single``, ``cat5``, ``wide5``…; the first subset when
        there are several) or by id."""
        if isinstance(name, Representation):
            return name
        reps = self.representations()
        for r in reps:
            if name in (r.column, r.id):
                return r
        raise ConfigError(
            f"no representation {name!r} in {self.store.root}; it has "
            f"{sorted({r.column for r in reps})}"
        )

    def features(
        self, representation: str | Representation, data: Split | Task | Any
    ) -> torch.Tensor:
        """Features ``(N, dim)`` of ``data`` (a Split, a Task's test split, or an array of
        inputs shaped like the source's), through the run's feature cache."""
        rep = self.representation(representation)
        if isinstance(data, Task):
            data = data.test
        if not isinstance(data, Split):
            x = torch.as_tensor(np.asarray(data), dtype=torch.float32)
            if tuple(x.shape[1:]) != self.source_task.input_shape:
                raise DataError(
                    f"inputs of shape {tuple(x.shape)} do not fit the encoders, which take "
                    f"(N, {', '.join(map(str, self.source_task.input_shape))})"
                )
            data = Split(x, torch.zeros(len(x), dtype=torch.long))
        return self.featurizer(rep, data)

    def context(self, representations: Sequence[Representation] | None = None) -> Context:
        """The context every protocol evaluates in: the run's featurizer, source task, default
        probe, seed and ``representations`` (default: all of them), with this run behind it."""
        return Context(
            self.featurizer,
            self.source_task,
            self.exp.evaluation.probe,
            self.exp.seed,
            run=self.exp.run_id(),
            device=str(self.device),
            owner=self,
            representations=list(
                self.representations() if representations is None else representations
            ),
        )

    def evaluate(
        self,
        target: Task | SuiteEntry | dict[str, Any],
        protocol: str = "transfer",
        representations: Sequence[str | Representation] | None = None,
        *,
        save: bool = False,
        replace: bool = False,
        **entry: Any,
    ) -> list[Row]:
        """Evaluate representations (default: all) on ``target`` — a Task, or a suite entry
        (as in the experiment file) — with ``protocol``; return the rows. Nothing is written
        unless ``save``: then the entry becomes one of the run's extra entries, its rows kept in
        the run folder as ``richrep evaluate RUN --entry`` keeps them (the next ``richrep
        evaluate RUN`` or ``richrep run`` redraws the report); ``replace`` replaces an extra
        entry of the same name and other content."""
        if isinstance(target, dict):
            (target,) = entries.parse_entries(target, "Run.evaluate")
        if save:
            if not isinstance(target, SuiteEntry) or representations:
                raise ConfigError(
                    "Run.evaluate(save=True) keeps a suite entry (a mapping as in the experiment "
                    "file, which the run can rebuild) evaluated on every representation"
                )
            (target,) = entries.resolve_entries(self.exp, [target], "Run.evaluate")
            self._keep(target, replace)  # refused before any work
        if isinstance(target, SuiteEntry):
            spec = target
            task = self.target(spec)
        else:
            task = target
            spec = SuiteEntry.model_validate(
                {"name": entry.pop("name", task.name or "target"), "protocol": protocol, **entry}
            )
        spec = spec.model_copy(update={"protocol": spec.protocol.resolved(PROTOCOLS, "protocol")})
        facts = stored.target_facts(self.source_stats, task, spec.name)
        if "warning" in facts:
            warnings.warn(facts["warning"], stacklevel=2)
        ctx = dataclasses.replace(self.context(), info=facts)
        proto = protocol_of(spec)
        reps = (
            [self.representation(r) for r in representations]
            if representations
            else ctx.representations
        )
        evaluated = (row for rep in reps for row in proto.evaluate(ctx, rep, task, spec))
        if not save:
            return list(evaluated)
        with self.store.lock():
            path = stored.entry_file(self.store.results_dir, self.exp, spec, reps, self.statuses())
            rows = stored.kept_rows(path, spec, lambda: [*evaluated])
            self._keep(spec, replace, write=True)
            stored.put_rows(self.store.results, spec.name, path, rows)
        return rows

    def _keep(self, entry: SuiteEntry, replace: bool, write: bool = False) -> None:
        """Add ``entry`` to the run's extra entries (refused if it clashes: see
        :func:`~richrep.config.entries.merge_extras`); ``write``: to ``extra_entries.yaml``."""
        suite, extras = self.exp.evaluation.suite, self.extra_entries
        kept = entries.merge_extras(
            suite, extras, [entry], replace=replace, where=str(self.store.root)
        )
        if write and kept != extras:
            self.extras.write(kept)

    def results(self, entry: str | Sequence[str] | None = None) -> Any:
        """The run's result rows (``results.jsonl``, checked against its sha256) as a pandas
        DataFrame, one row per measurement: the :class:`~richrep.results.Row` fields, then the
        keys of ``extra``; ``entry``: only this entry (or these). Needs pandas
        (``pip install 'richrep[data]'``)."""
        return results_frame(self.store.results, entry)

    def advise(
        self,
        target: str | None = None,
        budget: str | None = None,
        max_k: int | None = None,
        metric: str = "accuracy",
    ) -> list[Advice]:
        """What to use, per target, from this run's rows and ledger: what more seeds would buy
        (fitted against K, with intervals) and the cheapest representation within noise of the
        best (:mod:`richrep.analysis.advise`)."""
        order = [e.name for e in self.suite]
        return advise_store(
            self.store, target=target, budget=budget, max_k=max_k, metric=metric, order=order
        )

    def __repr__(self) -> str:
        return f"Run({str(self.store.root)!r})"


def member_costs(store: RunStore) -> list[MemberCost]:
    """Each finished member's training time, parameters and feature size, as its ledger
    record has them (no data is built)."""
    num = lambda v, kind: kind(v) if isinstance(v, int | float) and v == v else None  # noqa: E731
    out = []
    for name, meta in Ledger(store).records().items():
        m = meta.get("member") if isinstance(meta.get("member"), dict) else {}
        k, seed = num(m.get("k"), int), num(m.get("seed"), int)
        if k is None or seed is None:
            continue  # not a member record richrep wrote
        out.append(
            MemberCost(
                name,
                str(m.get("kind", "")),
                k,
                seed,
                num(meta.get("train_seconds"), float),
                num(meta.get("encoder_params"), int),
                num(meta.get("feature_dim"), int),
                tuple(str(r) for r in m.get("requires") or () if isinstance(r, str)),
                str(meta.get("device", "cpu")),
            )
        )
    return out


def advise_store(store: RunStore | str | Path, **options: Any) -> list[Advice]:
    """:meth:`Run.advise` on a run folder without loading its experiment (the entries in the
    order of the results); ``options`` as :func:`richrep.analysis.advise.advise` takes them."""
    if not isinstance(store, RunStore):
        store = RunStore(Path(store))
        if not store.exists():
            raise StoreError(f"{store.root} is not a richrep run folder (no config.yaml)")
        store.check_format()
    if not store.results.exists():
        raise StoreError(
            f"{store.root} has no results.jsonl yet; run `richrep run` (or --only evaluate) first"
        )
    if options.get("budget") is not None:
        parse_budget(options["budget"])  # a malformed budget fails before the rows are read
    metric = options.get("metric", "accuracy")
    rows = [Row.from_dict(d) for d in read_jsonl(store.results) if d.get("metric") == metric]
    if not rows:
        have = sorted({str(d.get("metric")) for d in read_jsonl(store.results)})
        raise ConfigError(f"no {metric!r} result rows in {store.root}; it has {have}")
    return advise(rows, member_costs(store), **options)


def open_run(path: str | Path) -> Run:
    """The run in folder ``path`` (written by ``richrep run``)."""
    return Run.open(path)
