"""The ``finetune`` protocol: the networks behind a representation trained end to end on the
target, in the two ways of Zhang & Bottou (ICML 2023, § fine-tuning):

- ``mode: init`` — "[init]cat": the representation's network(s) (for catK the K towers side
  by side, one :class:`~richrep.models.JointEncoder` of copies) and a new linear head on the
  concatenated features, trained together on the target's training data.
- ``mode: two_stage`` — "[2ft]cat": each of the K seeds is fine-tuned separately (its own new
  head); the K fine-tuned encoders are concatenated under a new head initialized as their
  heads side by side, scaled 1/K (so it starts from the mean of the K models' logits,
  :func:`~richrep.evaluation.finetune_train.concat_heads`); then only that head trains,
  briefly (``head_epochs`` at ``head_lr``), on the frozen fine-tuned features, computed once.
  A representation with one network (single, wideK, wide_dimK, jointK, distillK) is that
  network fine-tuned with a new head (as ``init``), followed by the same brief head phase on
  its frozen features. Floors (``input``, ``random``) have no trained network: no rows.

Write one suite entry per mode (e.g. ``finetune_init`` and ``finetune_2ft``): the table's row
key has no room for a mode. Sizes and draws are those of ``transfer`` (the same examples).

**Chosen on validation, never on test.** Each draw's examples are split (stratified,
``val_fraction`` of each class held out, seeded by the experiment seed, entry, size and draw)
into fine-tuning data and a validation split. Every (lr, weight decay) of the grid
``lrs × weight_decays`` fine-tunes for ``max_epochs`` epochs (SGD, momentum 0.9, cosine
schedule) and is evaluated on the validation split after every epoch; the epoch with the best
validation accuracy (ties: lower validation loss, then the earlier epoch) is that setting's
result. The setting whose final model (for ``two_stage``: after the head phase) has the best
validation accuracy (same ties, then grid order) is chosen. In ``two_stage`` every seed keeps
its own best epoch, the (lr, weight decay) is shared by the K seeds, and the head phase has
no choice (fixed ``head_epochs``, ``head_lr``, the setting's weight decay). The selected model
is evaluated as it is — it is **not** refit on fine-tuning plus validation data — so it has
seen ``train_n`` examples (recorded), fewer than ``transfer``'s probe on the same draw.

Rows record ``mode``, ``lr``, ``weight_decay``, ``epochs`` (``init``: the chosen epoch;
``two_stage``: one per network, in seed order), ``val_acc`` and ``val_loss``.

**Resume.** After each (representation, size, draw) its result is written atomically to
``<run>/finetune_work/<entry>-<hash>/<representation>-<size>-<draw>.json`` (the hash covers
the protocol's settings, the target, the sizes and draws and the run); a rerun reads finished
items back instead of training them again. Fine-tuned weights are kept only with
``keep_weights: true``, as ``<run>/finetuned/<entry>/<representation>-<size>-<draw>.safetensors``
(with a sha256 sidecar holding the chosen settings).

**Cost.** The per-seed fine-tunings of ``two_stage`` are cached per (seed, size, draw, lr,
weight decay) within an entry with their features, so cat2, cat3, … reuse those the singles
made and add only head phases; ``init`` trains each catK subset's towers anew. Training
autocasts to the run's precision and uses channels_last for convolutions (faster for the CNN
on a CPU; bf16 only where the CPU runs it fast, as ``training.precision: auto`` decides). The
size ``all`` dominates the cost (timings: the README's Performance section).
``columns`` restricts the representations fine-tuned (e.g. ``[single, cat5, wide5]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from richrep.config import SuiteEntry, stable_hash
from richrep.data import Split, Task
from richrep.data.splits import stratified_split
from richrep.errors import ConfigError, StoreError, TrainingError
from richrep.evaluation.finetune_train import (
    Fitted,
    Tuned,
    accuracy_and_loss,
    concat_heads,
    fit_network,
    head_of,
    network,
    predict,
)
from richrep.evaluation.protocols import Context
from richrep.evaluation.run_view import RunView
from richrep.plugins import FLOORS, PROTOCOLS
from richrep.representations import Representation
from richrep.representations.features import extract
from richrep.results import Row
from richrep.runtime.seeding import seed_hash
from richrep.store import read_json, verify, write_json
from richrep.training.checkpoint import save_checkpoint

VERSION = 1  # of the procedure: a change makes earlier work files unused
Rate = Annotated[float, Field(gt=0, le=10)]
Decay = Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True)
class Job:
    """One (representation, size, draw) to fine-tune: the draw split into fine-tuning and
    validation data; ``where`` (experiment seed, entry, size, draw) seeds the new heads and
    the data order (nothing of the test data does); ``weights`` is where kept weights go."""

    run: RunView
    rep: Representation
    target: Task
    train: Split
    val: Split
    where: tuple[Any, ...]
    weights: Path
    advance: Callable[[int], None]  # steps of training done


@PROTOCOLS.register(
    "finetune",
    metrics=("accuracy",),
    description="the networks fine-tuned end to end on the target ([init] or [2ft])",
)
class FineTune:
    """Fine-tune the representation's network(s) on the target's training data (n examples per
    class, several draws, and all), choose lr, weight decay and epochs on a validation split of
    that data, test on its test set (Zhang & Bottou 2023: [init]cat and [2ft]cat).

    ``mode``: ``init`` or ``two_stage`` (one per suite entry); ``lrs`` × ``weight_decays``: the
    settings tried (the paper's grid is lr ∈ {0.005, 0.01, 0.05} × wd ∈ {0, 1e-5, 1e-4,
    5e-4}; the default is smaller because CPU time is scarce); ``max_epochs``: the cosine
    schedule's length, within which the best epoch is chosen; ``head_epochs``, ``head_lr``:
    the head-only phase of ``two_stage`` (0 epochs: the mean of the K fine-tuned models'
    logits); ``val_fraction``: of each class held out for validation; ``batch_size``;
    ``keep_weights``: save the chosen models; ``columns``: only these table columns (or
    representation ids), default every representation with networks."""

    def __init__(
        self,
        mode: Literal["init", "two_stage"] = "two_stage",
        lrs: Annotated[list[Rate], Field(min_length=1)] = [0.01, 0.05],  # noqa: B006
        weight_decays: Annotated[list[Decay], Field(min_length=1)] = [0.0, 5e-4],  # noqa: B006
        max_epochs: Annotated[int, Field(ge=1, le=1000)] = 8,
        head_epochs: Annotated[int, Field(ge=0, le=1000)] = 2,
        head_lr: Rate = 1e-3,
        val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
        batch_size: Annotated[int, Field(ge=1)] = 128,
        keep_weights: bool = False,
        columns: list[str] | None = None,
    ) -> None:
        self.mode = mode
        self.grid = [(lr, wd) for lr in dict.fromkeys(lrs) for wd in dict.fromkeys(weight_decays)]
        self.max_epochs = max_epochs
        self.head_epochs = head_epochs
        self.head_lr = float(head_lr)
        self.val_fraction = float(val_fraction)
        self.batch_size = batch_size
        self.keep_weights = keep_weights
        self.columns = None if columns is None else set(columns)
        self._tuned: dict[tuple[Any, ...], Tuned] = {}  # two_stage: per (seed member, …)
        self._planned: set[tuple[Any, ...]] = set()  # what work() counted of them

    unit = "network steps"

    # -- the protocol -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What the results depend on (not ``keep_weights`` or ``columns``)."""
        return {
            "mode": self.mode,
            "grid": self.grid,
            "max_epochs": self.max_epochs,
            "head_epochs": self.head_epochs if self.mode == "two_stage" else 0,
            "head_lr": self.head_lr if self.mode == "two_stage" else 0,
            "val_fraction": self.val_fraction,
            "batch_size": self.batch_size,
            "version": VERSION,
        }

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        small = [s for s in entry.sizes if s != "all" and int(s) < 2]
        if small:
            raise ConfigError(
                f"suite entry {entry.name!r}: finetune holds out validation examples of every "
                f"class, so sizes need at least 2 examples per class; got {small}"
            )

    def wanted(self, rep: Representation) -> bool:
        """Whether ``rep`` has trained networks to fine-tune (floors do not) and is asked for."""
        if rep.kind in FLOORS or not rep.parts:
            return False
        if any(p == "input" or p.startswith("random-") for p in rep.parts):
            return False
        return rep.chosen(self.columns)

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        if not self.wanted(rep):
            return []
        run = ctx.run_of(entry, "finetune trains the run's networks, so it")
        data, sets = ctx.probe_sets(target, entry)
        work = self.work_dir(run, ctx, target, entry)
        rows = []
        for size, d, idx in sets:
            key = self.item_key(run, rep, size, d)
            path = work / f"{file_stem(rep.id)}-{size}-{d}.json"
            record = self.finished(run, entry, rep, size, d, path)
            if record is None:
                weights = self.weights_path(run, entry, rep, size, d)
                record = self.item(ctx, run, rep, target, entry, data, size, d, idx, weights)
                write_json(path, {"key": key, **record})
            rows.append(
                ctx.row(
                    entry,
                    rep,
                    "accuracy",
                    record["value"],
                    record["n"],
                    size=size,
                    draw=d,
                    train_n=record["train_n"],
                    extra=record["extra"],
                )
            )
        return rows

    def work(self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> int:
        """Steps of one network ``rep`` still needs fine-tuned (a step of catK's K towers is K):
        none for items finished on disk; in ``two_stage`` none for a seed's fine-tuning an
        earlier representation (asked before this one) makes, nor for the head phase (on
        frozen features: cheap)."""
        if not self.wanted(rep):
            return 0
        run = ctx.run_of(entry, "finetune trains the run's networks, so it")
        data, sets = ctx.probe_sets(target, entry)
        work = self.work_dir(run, ctx, target, entry)
        total = 0
        for size, d, idx in sets:
            path = work / f"{file_stem(rep.id)}-{size}-{d}.json"
            if self.finished(run, entry, rep, size, d, path) is not None:
                continue
            keep, _ = self.split(ctx, entry, data.subset(idx).y, size, d)
            steps = math.ceil(len(keep) / self.batch_size)
            if self.mode == "init":
                total += len(self.grid) * self.max_epochs * steps * len(rep.parts)
                continue
            for lr, wd in self.grid:
                for part in rep.parts:
                    key = (target.hash, ctx.seed, entry.name, size, d, part, lr, wd)
                    if key not in self._planned:
                        self._planned.add(key)
                        total += self.max_epochs * steps
        return total

    def finished(
        self,
        run: RunView,
        entry: SuiteEntry,
        rep: Representation,
        size: int | str,
        d: int,
        path: Path,
    ) -> dict[str, Any] | None:
        """The item's finished result (None: it is to be computed)."""
        record = read_item(path, self.item_key(run, rep, size, d))
        weights = self.weights_path(run, entry, rep, size, d)
        return None if self.keep_weights and not verify(weights) else record

    def split(
        self, ctx: Context, entry: SuiteEntry, y: torch.Tensor, size: int | str, d: int
    ) -> tuple[Any, Any]:
        """A draw's (fine-tuning, validation) positions."""
        return stratified_split(y, self.val_fraction, ctx.seed, "finetune", entry.name, size, d)

    # -- work files -------------------------------------------------------------------------
    def work_dir(self, run: RunView, ctx: Context, target: Task, entry: SuiteEntry) -> Path:
        h = stable_hash(
            {
                "settings": self.settings(),
                "sizes": list(entry.sizes),
                "draws": entry.draws,
                "target": target.hash,
                "run": ctx.run,
                "seed": ctx.seed,
            }
        )
        return run.store.work(f"{entry.name}-{h}")

    def item_key(
        self, run: RunView, rep: Representation, size: int | str, d: int
    ) -> dict[str, Any]:
        return {
            "representation": rep.id,
            "parts": list(rep.parts),
            "checkpoints": [run.checkpoint_sha(p) for p in rep.parts],
            "size": size,
            "draw": d,
        }

    def weights_path(
        self, run: RunView, entry: SuiteEntry, rep: Representation, size: int | str, d: int
    ) -> Path:
        return run.store.kept(entry.name) / f"{file_stem(rep.id)}-{size}-{d}.safetensors"

    # -- one (representation, size, draw) ---------------------------------------------------
    def item(
        self,
        ctx: Context,
        run: RunView,
        rep: Representation,
        target: Task,
        entry: SuiteEntry,
        data: Split,
        size: int | str,
        d: int,
        idx: torch.Tensor,
        weights: Path,
    ) -> dict[str, Any]:
        """Fine-tune ``rep`` on one draw, choose on validation, test the chosen model."""
        sub = data.subset(idx)
        keep, held = self.split(ctx, entry, sub.y, size, d)
        if len(held) == 0 or len(keep) == 0:
            raise ConfigError(
                f"suite entry {entry.name!r}: size {size} leaves no validation examples for "
                f"finetune (val_fraction {self.val_fraction}); use sizes of at least 2 per class"
            )
        train, val = sub.subset(keep), sub.subset(held)
        where = (ctx.seed, entry.name, size, d)
        job = Job(run, rep, target, train, val, where, weights, ctx.advance)
        out = self.init(job) if self.mode == "init" else self.two_stage(job)
        counts = torch.bincount(sub.y)
        out["extra"].update(
            mode=self.mode,
            val_n=len(val),
            per_class=int(counts[counts > 0].min()),
        )
        return {"n": len(target.test), "train_n": len(train), **out}

    def _fit(
        self, job: Job, model: nn.Module, lr: float, wd: float, name: str, networks: int = 1
    ) -> Fitted:
        run = job.run
        return fit_network(
            model.to(run.device),
            job.train,
            job.val,
            lr=lr,
            weight_decay=wd,
            epochs=self.max_epochs,
            batch_size=self.batch_size,
            seed=seed_hash("finetune-order", *job.where, name),
            device=run.device,
            dtype=run.dtype,
            on_step=lambda: job.advance(networks),
        )

    def init(self, job: Job) -> dict[str, Any]:
        """[init]: the whole representation and a new head trained together, per setting."""
        run, rep, target = job.run, job.rep, job.target
        best: tuple[float, float, Fitted] | None = None
        failures = []
        for lr, wd in self.grid:
            model = network(run, rep.parts, target.num_classes, *job.where, rep.id)
            f = self._fit(job, model, lr, wd, rep.id, len(rep.parts))
            if f.state is None:
                failures.append(f.failed)
            elif best is None or f.score() > best[2].score():
                best = (lr, wd, f)
        if best is None:
            raise TrainingError(
                f"finetune of {rep.id}: every setting failed ({'; '.join(failures)})"
            )
        lr, wd, f = best
        model = network(run, rep.parts, target.num_classes, *job.where, rep.id)
        model.load_state_dict(f.state)
        acc, _ = accuracy_and_loss(
            predict(model, target.test.x, run.device, run.dtype), target.test.y
        )
        extra = {
            "lr": lr,
            "weight_decay": wd,
            "epochs": f.epoch,
            "val_acc": f.val_acc,
            "val_loss": f.val_loss,
        }
        if self.keep_weights:
            save_checkpoint(job.weights, model, representation=rep.id, mode=self.mode, **extra)
        return {"value": acc, "extra": extra}

    def member(self, job: Job, part: str, lr: float, wd: float) -> Tuned:
        """One seed's network fine-tuned with (lr, wd) and its new head: cached for the entry,
        so every catK subset holding the seed reuses it (with its frozen features)."""
        run, train, val = job.run, job.train, job.val
        sha = run.checkpoint_sha(part)
        key = (job.target.hash, *job.where, part, sha, lr, wd)
        if key not in self._tuned:
            model = network(run, (part,), job.target.num_classes, *job.where, part)
            f = self._fit(job, model, lr, wd, part)
            t = Tuned(f)
            if f.state is not None:
                t.head = head_of(f.state)
                f.state = None  # the head and the features are what the cat subsets need
                t.features = {
                    name: extract(model.encoder, s.x, device=run.device, dtype=run.dtype)
                    for name, s in (("train", train), ("val", val), ("test", job.target.test))
                }
                if self.keep_weights:
                    t.encoder = {k: v.cpu() for k, v in model.encoder.state_dict().items()}
            self._tuned[key] = t
        return self._tuned[key]

    def two_stage(self, job: Job) -> dict[str, Any]:
        """[2ft]: each network fine-tuned alone, then the concatenated head alone, per setting."""
        run, rep, target, train, val = job.run, job.rep, job.target, job.train, job.val
        best = None
        failures = []
        for lr, wd in self.grid:
            tuned = [self.member(job, p, lr, wd) for p in rep.parts]
            bad = [t.fitted.failed for t in tuned if t.head is None]
            if bad:
                failures += bad
                continue
            head = concat_heads([t.head for t in tuned])  # type: ignore[misc]
            feats = {
                s: torch.cat([t.features[s] for t in tuned], dim=1)  # type: ignore[index]
                for s in ("train", "val", "test")
            }
            if self.head_epochs:
                fit_network(
                    head,
                    Split(feats["train"], train.y),
                    Split(feats["val"], val.y),
                    lr=self.head_lr,
                    weight_decay=wd,
                    epochs=self.head_epochs,
                    batch_size=self.batch_size,
                    seed=seed_hash("finetune-head-order", *job.where, rep.id),
                    device=torch.device("cpu"),
                    dtype=torch.float32,
                    select=False,
                )
            with torch.no_grad():
                score = accuracy_and_loss(head.eval()(feats["val"]), val.y)
            if best is None or (score[0], -score[1]) > (best[4][0], -best[4][1]):
                best = (lr, wd, tuned, head, score, feats["test"])
        if best is None:
            raise TrainingError(
                f"finetune of {rep.id}: every setting failed ({'; '.join(failures)})"
            )
        lr, wd, tuned, head, (val_acc, val_loss), test_feats = best
        with torch.no_grad():
            acc, _ = accuracy_and_loss(head(test_feats), target.test.y)
        extra = {
            "lr": lr,
            "weight_decay": wd,
            "epochs": [t.fitted.epoch for t in tuned],
            "val_acc": val_acc,
            "val_loss": val_loss,
            "member_val_acc": [t.fitted.val_acc for t in tuned],
            "head_epochs": self.head_epochs,
            "head_lr": self.head_lr,
        }
        if self.keep_weights:
            model = network(run, rep.parts, target.num_classes, *job.where, rep.id)
            towers = model.encoder.towers if len(tuned) > 1 else [model.encoder]
            for tower, t in zip(towers, tuned, strict=True):
                tower.load_state_dict(t.encoder)
            model.head = head
            save_checkpoint(job.weights, model, representation=rep.id, mode=self.mode, **extra)
        return {"value": acc, "extra": extra}


def file_stem(rep_id: str) -> str:
    """A file name for a representation id (``cat2[0,1]`` -> ``cat2_0_1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", rep_id).strip("_") or "rep"


def read_item(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The finished result of an item, or ``None`` when there is none, it is unreadable or it
    was made for other checkpoints (then it is computed again and overwritten)."""
    try:
        record = read_json(path)
    except (FileNotFoundError, StoreError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    if not all(k in record for k in ("value", "n", "train_n", "extra")):
        return None
    return record
