"""The ``truncation`` protocol: how much of a representation is needed — the linear probe and
1-nearest-neighbour accuracy on the first m features, for every m of a nest (Kusupati et al.,
NeurIPS 2022, "Matryoshka Representation Learning", evaluate their representations this way).

Prefixes: ``dims`` (default: powers of two from 8 below the representation's dimension, and
the dimension itself), plus, with ``blocks``, every multiple of a seed's dimension for catK —
its natural prefixes are its first k seeds. The probe is the evaluation's (regularization
chosen on a validation split of the target's training data, as ``transfer``); 1-NN is cosine
similarity to the target's training examples. Rows: ``accuracy`` (probe) and ``nn_accuracy``
per prefix (``variant`` "first m dims", ``extra["prefix"]`` = m).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.evaluation.protocols import Context, fit_probe, probe_facts
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row

CHUNK = 2048


def prefixes(dim: int, k: int, dims: list[int] | None, blocks: bool) -> list[int]:
    """The prefix lengths evaluated for a representation of ``dim`` features made of ``k``
    equal blocks."""
    out = set(m for m in (dims or []) if m <= dim)
    if dims is None:
        m = 8
        while m < dim:
            out.add(m)
            m *= 2
    out.add(dim)
    if blocks and k > 1 and dim % k == 0:
        out.update(range(dim // k, dim, dim // k))
    return sorted(out)


def nearest_neighbour_accuracy(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor
) -> float:
    """1-NN accuracy by cosine similarity, in chunks of the test set."""
    a = torch.nn.functional.normalize(train.float(), dim=1)
    right = 0
    for lo in range(0, len(test), CHUNK):
        q = torch.nn.functional.normalize(test[lo : lo + CHUNK].float(), dim=1)
        right += int((train_y[(q @ a.t()).argmax(1)] == test_y[lo : lo + CHUNK]).sum())
    return right / max(len(test), 1)


@PROTOCOLS.register(
    "truncation",
    metrics=("accuracy", "nn_accuracy"),
    vs_k=False,
    description="probe and 1-NN accuracy on the first m features, for every m of a nest",
)
class Truncation:
    """Probe and 1-NN accuracy of the first m features for each prefix m (``dims``, and catK's
    seed blocks with ``blocks``); ``probe`` / ``nearest`` switch either off."""

    def __init__(
        self,
        dims: list[Annotated[int, Field(ge=1)]] | None = None,
        blocks: bool = True,
        probe: bool = True,
        nearest: bool = True,
    ) -> None:
        self.dims, self.blocks, self.probe, self.nearest = dims, blocks, probe, nearest

    unit = "prefixes"

    def work(self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> int:
        return len(self.prefixes(rep))

    def prefixes(self, rep: Representation) -> list[int]:
        return prefixes(rep.dim, rep.k if rep.kind == "cat" else 1, self.dims, self.blocks)

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        train = ctx.pool(target)
        feats, test = ctx.featurizer(rep, train), ctx.featurizer(rep, target.test)
        rows = []
        for m in self.prefixes(rep):
            common = {"size": "all", "draw": 0, "train_n": len(train), "variant": f"first {m} dims"}
            if self.probe:
                p = fit_probe(ctx.make_probe(entry), feats[:, :m], train.y)
                acc = p.score(test[:, :m], target.test.y)
                extra = {**probe_facts(p), "prefix": m}
                rows.append(ctx.row(entry, rep, "accuracy", acc, len(test), **common, extra=extra))
            if self.nearest:
                acc = nearest_neighbour_accuracy(feats[:, :m], train.y, test[:, :m], target.test.y)
                rows.append(
                    ctx.row(
                        entry, rep, "nn_accuracy", acc, len(test), **common, extra={"prefix": m}
                    )
                )
            ctx.advance(1)
        return rows
