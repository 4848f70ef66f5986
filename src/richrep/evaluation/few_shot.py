"""The ``few_shot`` protocol: N-way k-shot episodes on the target's held-out classes.

As in the few-shot evaluation of Zhang & Bottou (ICML 2023, "Learning useful representations
for shifting tasks and distributions"; 5-way miniImageNet on Baseline++ features: 1-shot single
57.5, cat5 63.6, distill5 62.9; 5-shot 76.5, 81.2, 81.5), itself the protocol of Chen et al.
(ICLR 2019, "A Closer Look at Few-shot Classification", Baseline/Baseline++): each episode draws
``ways`` classes of the target and, from its TEST split, ``shots`` support and ``queries`` query
examples of each; a classifier fit on the frozen support features labels the queries. The
target (e.g. classes 5-9) is already held out from the source task, so no class of an episode
was seen in training.

Episodes come from ``richrep.data.splits.rng(seed, "few_shot", entry, shots, episode)``: the
same for every representation (so differences are paired per episode) and reproducible. Each
representation's test features are extracted once (cached); all episodes then run as batched
tensor operations.

Classifiers (one per suite entry; write two entries to get both):

* ``prototype`` — cosine similarity to the class means of the L2-normalized support features
  (the prototypes of Snell et al., NeurIPS 2017, with the cosine of Baseline++); no centering.
* ``linear`` — multinomial logistic regression on support features standardized with support
  statistics, objective ``C * sum CE + ||W||^2 / 2`` (intercept unpenalized), as
  :class:`~richrep.evaluation.probes.LinearProbe` and scikit-learn's ``LogisticRegression(C)``
  (for ``ways=2``, sklearn's binary model at ``2 C``). ``C`` is FIXED: an episode has no
  validation split to choose it on, and tuning it on the queries would be tuning on test. The
  weights lie in the span of the support features, so the problem is solved exactly in that
  (at most ways*shots)-dimensional basis, all episodes at once (:func:`linear_predict`).

Rows (``size`` = shots): ``accuracy``, one per episode (``episode`` set) and nothing else. The
episode is what varied, so the views compute from these rows what an episode study reports
(Chen et al. 2019: the mean with its 95% interval over episodes): a cell averages each
episode's values over seeds (or seed subsets) and gives the mean ± the half-width of the
95% t-interval over the episodes, n = episodes; a gain (catK − single) pairs the two sides per
episode. An interval or a difference is never stored as a row (older runs did:
``accuracy_ci95``, ``diff_vs_single``; the views ignore those rows).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.data.splits import rng
from richrep.errors import ConfigError
from richrep.evaluation.inputs import device_for
from richrep.evaluation.protocols import Context
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row
from richrep.runtime.cpu_policy import probe_compute_policy

Shots = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]
CHUNK = 1 << 26  # feature values gathered at once (256 MB of float32)


@PROTOCOLS.register(
    "few_shot",
    metrics=("accuracy",),
    description="N-way k-shot episodes on the target's test classes (prototype or linear)",
)
class FewShot:
    """N-way k-shot episodes drawn from the target's test split; nearest cosine prototype or a
    fixed-C linear probe on frozen features; accuracy per episode (the views give the mean
    and its 95% interval over episodes)."""

    def __init__(
        self,
        ways: Annotated[int, Field(ge=2)] = 5,
        shots: Shots = [1, 5],  # noqa: B006
        queries: Annotated[int, Field(ge=1)] = 15,
        episodes: Annotated[int, Field(ge=1)] = 600,
        classifier: Literal["prototype", "linear"] = "prototype",
        C: Annotated[float, Field(gt=0)] = 0.1,
    ) -> None:
        self.ways, self.queries, self.episodes = ways, queries, episodes
        self.shots = list(dict.fromkeys(shots))
        self.classifier, self.C = classifier, C

    unit = "episodes"

    def work(self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> int:
        return len(self.shots) * self.episodes

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        """Enough classes, and (on real data, not the preflight miniature) enough test examples
        of every class for ``max(shots) + queries``."""
        at = f"suite entry {entry.name!r}: few_shot"
        if target.num_classes < self.ways:
            raise ConfigError(
                f"{at} draws {self.ways}-way episodes but the target has only "
                f"{target.num_classes} classes {list(target.classes)}; lower `ways` or keep "
                f"more classes"
            )
        if target.recipe.get("preflight"):
            return
        need = max(self.shots) + self.queries
        counts = torch.bincount(target.test.y, minlength=target.num_classes)
        short = [i for i in range(target.num_classes) if int(counts[i]) < need]
        if short:
            listing = ", ".join(
                f"class {target.classes[i]} ({target.class_names[i]!r}) has {int(counts[i])}"
                for i in short
            )
            raise ConfigError(
                f"{at} needs shots + queries = {max(self.shots)} + {self.queries} = {need} test "
                f"examples of every class; {listing}; lower `shots` or `queries`"
            )

    def draw(
        self, ctx: Context, target: Task, entry: SuiteEntry, shots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Support (E, ways, shots) and query (E, ways * queries) indices into the test split,
        made once per entry and shared by every representation."""
        key = f"few_shot|{target.hash}|{entry.name}|{self.ways}|{shots}|{self.queries}"
        key += f"|{self.episodes}"
        if key not in ctx.fitted:
            self.check(entry, ctx.source, target)
            ctx.fitted[key] = episodes(
                target.test.y, self.ways, shots, self.queries, self.episodes, ctx.seed, entry.name
            )
        return ctx.fitted[key]

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        self.check(entry, ctx.source, target)
        feats = ctx.featurizer(rep, target.test)
        device = device_for(ctx.device, feats)
        feats = feats.to(device)
        rows = []
        extra = {"classifier": self.classifier, "ways": self.ways}
        n_q = self.ways * self.queries
        for shots in self.shots:
            support, query = (t.to(device) for t in self.draw(ctx, target, entry, shots))
            # many small batched steps: one CPU thread when they are small (the probes' policy)
            n_s = self.ways * shots
            work = n_s * (n_s + 1) if self.classifier == "linear" else n_q * feats.shape[1]
            with probe_compute_policy(len(support) * work, device, torch.float64):
                if self.classifier == "prototype":
                    pred, conv = prototype_predict(feats, support, query), None
                else:
                    pred, conv = linear_predict(feats, support, query, self.C)
            acc = (pred == query_labels(support, query)).double().mean(1).cpu()
            ctx.advance(self.episodes)
            common = {"size": shots, "draw": 0, "train_n": self.ways * shots}
            for i, a in enumerate(acc.tolist()):
                ex = extra if conv is None else {**extra, "converged": bool(conv[i])}
                rows.append(ctx.row(entry, rep, "accuracy", a, n_q, episode=i, **common, extra=ex))
        return rows


def episodes(
    labels: torch.Tensor, ways: int, shots: int, queries: int, n: int, seed: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support (n, ways, shots) and query (n, ways * queries) indices of ``n`` episodes, both
    class-major (the j-th class drawn is episode label j); episode i from
    ``rng(seed, "few_shot", name, shots, i)``."""
    y = labels.cpu().numpy()
    by_class = [(y == c).nonzero()[0] for c in range(int(y.max()) + 1)]
    present = [c for c, idx in enumerate(by_class) if len(idx)]
    sup = torch.empty(n, ways, shots, dtype=torch.long)
    qry = torch.empty(n, ways, queries, dtype=torch.long)
    for i in range(n):
        g = rng(seed, "few_shot", name, shots, i)
        for j, c in enumerate(g.choice(present, ways, replace=False)):
            pick = torch.as_tensor(g.choice(by_class[c], shots + queries, replace=False))
            sup[i, j], qry[i, j] = pick[:shots], pick[shots:]
    return sup, qry.flatten(1)


def _batches(feats: torch.Tensor, support: torch.Tensor, query: torch.Tensor) -> Any:
    """Episode ranges whose gathered support + query features stay under ``CHUNK`` values."""
    per = (support[0].numel() + query.shape[1]) * max(feats.shape[1], 1)
    step = max(1, CHUNK // per)
    for lo in range(0, support.shape[0], step):
        yield slice(lo, lo + step)


def query_labels(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The episode label (0 .. ways - 1) of every query: class-major, like the indices."""
    ways = support.shape[1]
    return torch.arange(ways, device=query.device).repeat_interleave(query.shape[1] // ways)


def prototype_predict(
    feats: torch.Tensor, support: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """Episode labels predicted for the queries (E, ways * queries) by the nearest prototype in
    cosine similarity: the prototypes are the class means of the L2-normalized support features
    (Snell et al. 2017; the cosine of Chen et al. 2019's Baseline++)."""
    z = torch.nn.functional.normalize(feats.float(), dim=1)
    out = []
    for s in _batches(z, support, query):
        protos = torch.nn.functional.normalize(z[support[s]].mean(2), dim=2)  # (e, ways, d)
        out.append(torch.bmm(z[query[s]], protos.transpose(1, 2)).argmax(2))
    return torch.cat(out)


def linear_predict(
    feats: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    C: float,
    tol: float = 1e-6,
    max_iter: int = 2000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode labels predicted for the queries (E, ways * queries), and whether each episode's
    solve converged, by L2-regularized multinomial logistic regression (``C * sum CE +
    ||W||^2 / 2``, intercept unpenalized) on support features standardized with the support's
    mean and std (a constant column gets scale 1, as scikit-learn's ``StandardScaler``).

    The optimal W lies in the span of the standardized support features, so the problem is
    solved in the basis of their singular vectors (from the n x n Gram matrix): coordinates
    ``Z = U sv`` with ``Z^T Z = sv^2`` diagonal. There Böhning's bound on the softmax Hessian
    (``(I - 11^T / k) / 2``) gives a diagonal majorizer ``C sv^2 / 2 + 1`` (intercept
    ``C n / 2``), and accelerated gradient steps scaled by it (restarted when they go uphill)
    converge in tens of iterations; ``tol`` bounds the largest gradient entry of the mean
    objective (scikit-learn's ``tol`` is 1e-4 on that scale)."""
    ways, shots = support.shape[1], support.shape[2]
    ys = torch.arange(ways, device=feats.device).repeat_interleave(shots)
    preds, convs = [], []
    for s in _batches(feats, support, query):
        xs = feats[support[s].flatten(1)]  # (e, n, d)
        varies = xs.amax(1, keepdim=True) > xs.amin(1, keepdim=True)
        mu = xs.mean(1, keepdim=True)
        xs.sub_(mu)  # a copy (advanced indexing), so in place is safe
        sd = xs.square().mean(1, keepdim=True).sqrt_()
        sd = torch.where(varies & (sd > 0), sd, torch.ones_like(sd))
        xs.div_(sd)
        ev, U = torch.linalg.eigh(torch.bmm(xs, xs.transpose(1, 2)).double())
        sv = ev.clamp_min(0).sqrt()
        sv = torch.where(sv > sv[:, -1:] * 1e-6, sv, torch.zeros_like(sv))  # rank <= n - 1
        xq = feats[query[s]].sub_(mu)
        cross = torch.bmm(xq, (xs / sd).transpose(1, 2)).double()  # standardized q · s
        inv = torch.where(sv > 0, 1 / sv.clamp_min(1e-300), torch.zeros_like(sv))
        B, b, conv = _fit(U * sv[:, None], ys, ways, C, tol, max_iter)
        preds.append((torch.bmm(torch.bmm(cross, U * inv[:, None]), B) + b[:, None]).argmax(2))
        convs.append(conv)
    return torch.cat(preds), torch.cat(convs)


def _fit(
    z: torch.Tensor, y: torch.Tensor, k: int, C: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimize ``C * sum_i CE(z_i B + b, y_i) + ||B||^2 / 2`` for every episode at once, z
    (e, n, m) with orthogonal columns (``z^T z`` diagonal, rows summing to 0). Returns B
    (e, m, k), b (e, k) and whether each episode reached ``tol``. Kept class-major, (e, k, .),
    where torch's small batched products and the softmax over k are fastest."""
    e, n, m = z.shape
    z1 = torch.cat([z, torch.ones_like(z[..., :1])], 2)  # (e, n, m + 1)
    z1t = z1.transpose(1, 2).contiguous()
    Y = torch.nn.functional.one_hot(y, k).to(z).t()  # (k, n)
    pen = torch.ones(m + 1, dtype=z.dtype, device=z.device)
    pen[-1] = 0.0  # the intercept is not penalized
    bound = torch.cat([C / 2 * (z * z).sum(1) + 1, torch.full_like(z[:, :1, 0], C * n / 2)], 1)
    step = (1 / bound)[:, None, :]  # the inverse of the diagonal majorizer, (e, 1, m + 1)
    theta = torch.zeros(e, k, m + 1, dtype=z.dtype, device=z.device)
    v, t = theta, torch.ones(e, 1, 1, dtype=z.dtype, device=z.device)
    done = torch.zeros(e, dtype=torch.bool, device=z.device)
    for _ in range(max_iter):
        logits = torch.bmm(v, z1t)  # (e, k, n)
        p = (logits - logits.amax(1, keepdim=True)).exp_()
        p = p.div_(p.sum(1, keepdim=True)).sub_(Y)
        g = torch.baddbmm(pen * v, p, z1, alpha=C)  # (e, k, m + 1)
        done |= g.flatten(1).abs().amax(1) <= tol * C * n
        new = v - step * g
        if bool(done.all()):
            theta = new
            break
        restart = ((g * (new - theta)).sum((1, 2)) > 0)[:, None, None]  # momentum went uphill
        t_next = (1 + (1 + 4 * t * t).sqrt()) / 2
        v = new + torch.where(restart, 0.0, (t - 1) / t_next) * (new - theta)
        theta, t = new, torch.where(restart, torch.ones_like(t), t_next)
    return theta[..., :-1].transpose(1, 2), theta[..., -1], done
