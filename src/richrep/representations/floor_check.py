"""The random-floor check: each seed against the ``random`` floor's part for the same seed (the
same encoder as initialized, untrained). Weights that load wrongly — the known silent failure
of tools that import checkpoints — give near-chance probes that no table flags; a seed whose
features are not clearly better than its untrained twin's is warned about by name.

The probe is a nearest-class-mean classifier on standardized features of the source task's
training split, cross-fitted over two seeded halves (fit on one, test on the other, both
ways), so every test example counts once: cheap, deterministic, and on features the suite's
in-distribution entries have usually extracted already. Equal dimension on both sides (a
seed against one untrained encoder, not against randomK, whose K·d features can beat a
well-trained seed on far targets, as the README's Fashion-MNIST tables show).

"Clearly better": by more than ``margin`` (one point) and more than the 95 % interval of the
difference of two accuracies on ``n`` examples, ``1.96·sqrt(2·p(1-p)/n)`` at the floor's
accuracy ``p``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from richrep.data import Split
from richrep.data.splits import rng
from richrep.errors import warn
from richrep.representations import Representation, Trained

Featurize = Callable[[Representation, Split], torch.Tensor]


class RandomFloorWarning(UserWarning):
    """A seed's probe accuracy is not clearly above its untrained encoder's."""


@dataclass(frozen=True)
class FloorCheck:
    member: str
    accuracy: float  # the trained seed's cross-fitted nearest-class-mean accuracy
    floor: float  # the same seed's untrained encoder's
    margin: float  # what the seed had to beat the floor by
    n: int

    @property
    def clearly_above(self) -> bool:
        return self.accuracy > self.floor + self.margin


def ncm_accuracy(x: torch.Tensor, y: torch.Tensor, halves: tuple[torch.Tensor, ...]) -> float:
    """Nearest-class-mean accuracy, cross-fitted over ``halves`` (index tensors)."""
    correct = 0
    for fit, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        xf = x[fit].double()
        mu, sd = xf.mean(0), xf.std(0).clamp_min(1e-6)
        z, zt = (xf - mu) / sd, (x[test].double() - mu) / sd
        classes = torch.unique(y[fit])
        means = torch.stack([z[y[fit] == c].mean(0) for c in classes])
        pred = classes[torch.cdist(zt, means).argmin(1)]
        correct += int((pred == y[test]).sum())
    return correct / len(y)


def check_seeds(
    featurize: Featurize,
    singles: Sequence[Trained],
    split: Split,
    seed: int = 0,
    margin: float = 0.01,
) -> list[FloorCheck]:
    """Each trained seed's cross-fitted probe accuracy on ``split`` against its untrained
    encoder's (the ``random`` floor's part ``random-<member>``)."""
    n = len(split.y)
    order = torch.from_numpy(rng(seed, "floor-check").permutation(n))
    halves = (order[: n // 2], order[n // 2 :])
    out = []
    for t in singles:
        dims = (t.feature_dim, t.encoder_params)
        trained = Representation("single", 1, (t.seed,), (t.name,), *dims)
        untrained = Representation("random", 1, (t.seed,), (f"random-{t.name}",), *dims)
        acc = ncm_accuracy(featurize(trained, split).float(), split.y, halves)
        p = ncm_accuracy(featurize(untrained, split).float(), split.y, halves)
        need = max(margin, 1.96 * math.sqrt(2 * p * (1 - p) / max(n, 1)))
        out.append(FloorCheck(t.name, acc, p, need, n))
    return out


def warn_below_floor(
    checks: Sequence[FloorCheck], sources: Mapping[str, str | None] | None = None
) -> list[str]:
    """Warn (``RandomFloorWarning``, once per seed) about each seed not clearly above its
    untrained encoder; return the messages."""
    messages = []
    for c in checks:
        if c.clearly_above:
            continue
        src = (sources or {}).get(c.member)
        origin = f" (imported from {src})" if src else ""
        msg = (
            f"{c.member}{origin}: its features are not clearly better than its untrained "
            f"encoder's (the random floor) on the source's training data: nearest-class-mean "
            f"accuracy {100 * c.accuracy:.1f} % vs {100 * c.floor:.1f} % (needs more than "
            f"{100 * c.margin:.1f} points, n = {c.n}); its weights may not have loaded or "
            f"trained as intended"
        )
        warn(msg, RandomFloorWarning)
        messages.append(msg)
    return messages
