"""Retrieval by cosine similarity, and the ``retrieval`` protocol: full-dimension search
against *adaptive retrieval* (Kusupati et al., NeurIPS 2022, "Matryoshka Representation
Learning", §4.3): shortlist with the first m features, re-rank the shortlist with all of them.

The gallery is the target's labelled training data (train and validation), the queries its
test split; an item is relevant to a query when it has the query's label. ``search`` uses
faiss (``pip install 'richrep[faiss]'``, an exact inner-product index) when installed and
``backend`` allows, torch matrix products in chunks otherwise; both give the same neighbours
(tested).

Metrics: ``top1`` (the nearest gallery item has the query's label) and ``map`` (mean average
precision at ``top``: AP@k = Σ_{i≤k} P@i · rel_i / min(k, relevant items)), and ``cost``: the
features touched per query relative to full search (N·m + L·D against N·D for a shortlist of L
from m of D features over N gallery items).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.errors import ConfigError
from richrep.evaluation.protocols import Context
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row

CHUNK = 1024
Backend = Literal["auto", "faiss", "torch"]


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


def search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, backend: Backend = "auto"
) -> torch.Tensor:
    """Indices ``(Q, k)`` of each query's ``k`` most cosine-similar gallery items, nearest
    first."""
    if queries.shape[1] != gallery.shape[1]:
        raise ConfigError(
            f"retrieval: queries have {queries.shape[1]} features and the gallery "
            f"{gallery.shape[1]}; they must be compared in one space"
        )
    k = min(int(k), len(gallery))
    q, g = normalized(queries), normalized(gallery)
    if backend == "faiss" or (backend == "auto" and have_faiss()):
        if not have_faiss():
            raise ConfigError("retrieval: backend 'faiss' needs `pip install 'richrep[faiss]'`")
        import faiss

        index = faiss.IndexFlatIP(g.shape[1])
        index.add(np.ascontiguousarray(g.numpy(), dtype=np.float32))
        _, idx = index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), k)
        return torch.from_numpy(idx.astype(np.int64))
    out = [(qc @ g.t()).topk(k, dim=1).indices for qc in q.split(CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def funnel(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    prefix: int,
    shortlist: int,
    k: int,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Adaptive retrieval: the ``shortlist`` nearest items by the first ``prefix`` features,
    re-ranked by all features; indices ``(Q, k)``."""
    short = search(queries[:, :prefix], gallery[:, :prefix], shortlist, backend)  # (Q, L)
    q, g = normalized(queries), normalized(gallery)
    out = []
    # The shortlist's similarities are read from one GEMM per chunk of queries: the same
    # numbers as gathering the L rows and taking dot products, several times faster on a CPU
    # (a gather of L·D floats per query is memory-bound). ``cost`` counts what a funnel must
    # touch, not what this evaluation computes.
    step = max(1, (1 << 23) // max(len(g), 1))  # ~32 MB of similarities per chunk
    for lo in range(0, len(q), step):
        s = short[lo : lo + step]
        sims = (q[lo : lo + step] @ g.t()).gather(1, s)  # (chunk, L)
        order = sims.topk(min(k, s.shape[1]), dim=1).indices
        out.append(s.gather(1, order))
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def top1(neighbours: torch.Tensor, gallery_y: torch.Tensor, query_y: torch.Tensor) -> float:
    """Fraction of queries whose nearest gallery item has their label."""
    if len(query_y) == 0:
        return float("nan")
    return float((gallery_y[neighbours[:, 0]] == query_y).double().mean())


def mean_average_precision(
    neighbours: torch.Tensor, gallery_y: torch.Tensor, query_y: torch.Tensor
) -> float:
    """mAP@k over the ranked ``neighbours`` (k = its width): AP@k = Σ_{i≤k} P@i · rel_i /
    min(k, relevant items in the gallery)."""
    if len(query_y) == 0:
        return float("nan")
    k = neighbours.shape[1]
    rel = (gallery_y[neighbours] == query_y[:, None]).double()  # (Q, k)
    precision = rel.cumsum(1) / torch.arange(1, k + 1, dtype=torch.float64)
    counts = torch.bincount(gallery_y, minlength=int(query_y.max()) + 1)
    n_rel = counts[query_y].clamp(max=k).double()
    ap = (precision * rel).sum(1) / n_rel.clamp(min=1)
    return float(ap.mean())


def scores(
    neighbours: torch.Tensor, gallery_y: torch.Tensor, query_y: torch.Tensor
) -> dict[str, float]:
    return {
        "top1": top1(neighbours, gallery_y, query_y),
        "map": mean_average_precision(neighbours, gallery_y, query_y),
    }


def shortlist_prefixes(dim: int, prefixes: list[int] | None) -> list[int]:
    """Shortlist dimensions: ``prefixes`` below ``dim`` (default powers of two from 8)."""
    if prefixes is not None:
        return sorted({m for m in prefixes if m < dim})
    out, m = [], 8
    while m < dim:
        out.append(m)
        m *= 2
    return out


@PROTOCOLS.register(
    "retrieval",
    metrics=("top1", "map"),
    vs_k=False,
    description="cosine retrieval: full search and shortlist-then-rerank funnels",
)
class Retrieval:
    """Full-dimension search, and for each shortlist prefix m (``prefixes``, default powers of
    two) and shortlist size L (``shortlist``) the funnel m → all features; mAP at ``top``."""

    def __init__(
        self,
        prefixes: list[Annotated[int, Field(ge=1)]] | None = None,
        shortlist: list[Annotated[int, Field(ge=1)]] = [200],  # noqa: B006
        top: Annotated[int, Field(ge=1)] = 10,
        backend: Backend = "auto",
        columns: list[str] | None = None,
    ) -> None:
        self.prefixes, self.shortlist, self.top = prefixes, shortlist, top
        self.backend, self.columns = backend, columns

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        if not rep.chosen(self.columns):
            return []
        gallery = ctx.pool(target)
        g, q = ctx.featurizer(rep, gallery), ctx.featurizer(rep, target.test)
        gy, qy = gallery.y, target.test.y
        n, d = g.shape
        runs = [("full search", None, None, 1.0)]
        for m in shortlist_prefixes(d, self.prefixes):
            for L in self.shortlist:
                if (n * m + L * d) < n * d:  # a funnel that saves nothing is not one
                    runs.append((f"funnel {m}→{d}, shortlist {L}", m, L, (n * m + L * d) / (n * d)))
        rows = []
        for variant, m, L, cost in runs:
            if m is None:
                nb = search(q, g, self.top, self.backend)
            else:
                nb = funnel(q, g, m, L, self.top, self.backend)
            extra = {"prefix": m or d, "shortlist": L or n, "at": self.top, "cost": round(cost, 6)}
            for metric, value in scores(nb, gy, qy).items():
                rows.append(
                    ctx.row(
                        entry,
                        rep,
                        metric,
                        value,
                        len(qy),
                        size="all",
                        draw=0,
                        train_n=n,
                        variant=variant,
                        extra=extra,
                    )
                )
        return rows
