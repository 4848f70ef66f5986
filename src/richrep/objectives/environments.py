"""What the out-of-distribution objectives share: risks per environment, and a penalty weight
that is annealed in (IRM's schedule: weight 1 for ``anneal_steps`` steps, then
``penalty_weight``, the loss divided by the weight when it exceeds 1 so the step size keeps its
scale; Arjovsky et al. 2019, and DomainBed's implementations, Gulrajani & Lopez-Paz 2021).

An environment objective reads ``batch["env"]`` (integer environment ids), which the training
loop and the ``ood`` protocol supply from the data's ``Split.env``."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.errors import ConfigError
from richrep.objectives.base import Batch, Objective

if TYPE_CHECKING:
    from richrep.data import Split


class IdentityCache:
    """Values computed from tensors, keyed by the tensors' identity (not their contents) and
    dropped when the tensors are: full-batch training passes the same tensors at every step."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, ...], tuple[tuple[weakref.ref, ...], Any]] = {}

    def get(self, *keys: torch.Tensor) -> Any:
        item = self._items.get(tuple(id(k) for k in keys))
        if item is None or any(r() is not k for r, k in zip(item[0], keys, strict=True)):
            return None
        return item[1]

    def put(self, value: Any, *keys: torch.Tensor) -> Any:
        key = tuple(id(k) for k in keys)
        refs = tuple(weakref.ref(k, lambda _r, key=key: self._items.pop(key, None)) for k in keys)
        self._items[key] = (refs, value)
        return value

    def __len__(self) -> int:
        return len(self._items)


_INDEX = IdentityCache()


def env_index(env: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct environment ids present, each example's position among them)."""
    hit = _INDEX.get(env)
    if hit is not None:
        return hit
    return _INDEX.put(tuple(torch.unique(env, return_inverse=True)), env)


def env_means(values: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` (..., N) within each environment present, (..., E) in id order
    (leading dimensions: several heads at once)."""
    _, pos = env_index(env)
    onehot = F.one_hot(pos).to(values.dtype)  # (N, E)
    return (values @ onehot) / onehot.sum(0)


def example_losses(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Per-example cross-entropy of logits (..., N, C): (..., N)."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    yy = y.expand(*logits.shape[:-1]).reshape(-1)
    ce = F.cross_entropy(flat, yy, reduction="none", label_smoothing=smoothing)
    return ce.reshape(logits.shape[:-1])


def env_risks(logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """Cross-entropy risk of each environment present, (..., E) in id order."""
    return env_means(example_losses(logits, y), env)


def with_environments(objective: Objective, data: Split, targets: Batch) -> Batch:
    """``targets`` plus the data's environments (``env``) and groups, which ``objective``
    reads; a :class:`ConfigError` when the data has none."""
    if data.env is None:
        raise ConfigError(
            f"objective {type(objective).__name__} needs environments, and the training data "
            "has none (use a dataset with environments, e.g. colored_*)"
        )
    out = {**targets, "env": data.env}
    if data.groups is not None:
        out["groups"] = data.groups
    return out


class EnvironmentObjective(Objective):
    """Base: ERM over the pooled batch plus ``weight(step) * penalty``; subclasses define
    :meth:`penalty`. The step counts forward passes in training mode. Logits may carry leading
    dimensions (several heads trained at once): the loss then has them too."""

    def __init__(
        self,
        penalty_weight: Annotated[float, Field(ge=0)] = 1.0,
        anneal_steps: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        super().__init__()
        self.penalty_weight = float(penalty_weight)
        self.anneal_steps = int(anneal_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)
        self.divisor = 1.0

    def prepare(self, data: Split, targets: Batch, *, augmented: bool) -> Batch:
        return with_environments(self, data, super().prepare(data, targets, augmented=augmented))

    def weight(self) -> float:
        return self.penalty_weight if int(self.step) >= self.anneal_steps else 1.0

    @property
    def reset_optimizer_at(self) -> int | None:
        """The step at which the penalty weight jumps (DomainBed resets Adam there)."""
        return self.anneal_steps if self.anneal_steps > 0 else None

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def risk(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return example_losses(logits, batch["y"]).mean(-1)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if "env" not in batch:
            raise ConfigError(
                f"objective {type(self).__name__} needs environments (Split.env), and the "
                f"training data has none: use a dataset with environments (e.g. colored_*)"
            )
        w = self.weight()
        loss = self.risk(logits, batch)
        if w > 0:
            loss = loss + w * self.penalty(logits, batch)
        if self.training:
            self.step += 1
        self.divisor = max(w, 1.0)  # a caller's own regularizer is divided alike (IRM's code)
        return loss / self.divisor
