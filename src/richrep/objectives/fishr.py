"""Fishr (Rame, Dancette & Cord, ICML 2022, "Fishr: Invariant Gradient Variances for
Out-of-Distribution Generalization"): match across environments the variance of the
per-example gradients of the loss with respect to the classifier (the last linear layer), the
penalty being the mean over environments of the squared distance of each environment's
variance vector to their mean (DomainBed's form, with its optional exponential moving average
of the variances, ``ema``).

For a linear head ``logits = z W^T + b`` the per-example gradient of the cross-entropy is
``(p - onehot(y)) ⊗ [z, 1]``, in closed form (no per-example backward passes); the features
``z`` come in ``batch["features"]``."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from richrep.errors import ConfigError
from richrep.objectives.base import Batch
from richrep.objectives.environments import EnvironmentObjective, IdentityCache, env_index
from richrep.plugins import OBJECTIVES


def head_gradients(logits: torch.Tensor, y: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-example gradients of the cross-entropy w.r.t. a linear head's weight and bias,
    flattened: ``(N, classes * (d + 1))``."""
    p = logits.float().softmax(-1)
    p = p - torch.nn.functional.one_hot(y, p.shape[-1]).to(p)
    z1 = torch.cat([features.float(), torch.ones_like(features[:, :1]).float()], 1)
    return (p[:, :, None] * z1[:, None, :]).flatten(1)


def gradient_variances(grads: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """Per-coordinate (population) variance of the gradients within each environment, (E, P)."""
    ids, pos = env_index(env)
    out = []
    for i in range(len(ids)):
        g = grads[pos == i]
        out.append((g - g.mean(0)).pow(2).mean(0))
    return torch.stack(out)


def head_gradient_variances(
    logits: torch.Tensor, y: torch.Tensor, features: torch.Tensor, env: torch.Tensor
) -> torch.Tensor:
    """:func:`gradient_variances` of :func:`head_gradients` without forming the (N, classes·(d+1))
    gradients: with ``a = p - onehot(y)`` and ``z1 = [z, 1]``, the variance of ``a_c z1_j``
    within an environment is ``mean(a_c² z1_j²) - mean(a_c z1_j)²``, two small matmuls.
    Logits (..., N, C) give (..., E, C·(d+1))."""
    a = logits.float().softmax(-1)
    a = a - torch.nn.functional.one_hot(y, a.shape[-1]).to(a)
    lead, c = a.shape[:-2], a.shape[-1]
    a = a.movedim(-2, -1).reshape(-1, a.shape[-2])  # (heads·C, N): one GEMM for every head
    out = []
    for m, z1, z1sq in _per_env(features, env):
        ae, n = a[:, m], len(m)
        second = (ae * ae) @ z1sq / n  # (heads·C, d + 1)
        first = ae @ z1 / n
        v = (second - first * first).reshape(*lead, c, z1.shape[1])
        out.append(v.flatten(-2))
    return torch.stack(out, -2)


_CACHE = IdentityCache()


def _per_env(features: torch.Tensor, env: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per environment: its example indices, ``[z, 1]`` and its square. Full-batch training
    passes the same tensors at every step, so they are made once (and dropped with them)."""
    hit = _CACHE.get(features, env)
    if hit is not None:
        return hit
    ids, pos = env_index(env)
    out = []
    for i in range(len(ids)):
        m = torch.nonzero(pos == i).flatten()
        z = features[m].float()
        z1 = torch.cat([z, torch.ones_like(z[:, :1])], 1)
        out.append((m, z1, z1 * z1))
    return _CACHE.put(out, features, env)


def fishr_penalty(variances: torch.Tensor) -> torch.Tensor:
    """Mean over environments of the mean squared difference of the variance vectors (..., E, P)
    to their mean over environments: (...)."""
    return (variances - variances.mean(-2, keepdim=True)).pow(2).mean(-1).mean(-1)


@OBJECTIVES.register("fishr")
class Fishr(EnvironmentObjective):
    """ERM + ``penalty_weight`` · Fishr penalty on the head's gradient variances."""

    def __init__(
        self,
        penalty_weight: Annotated[float, Field(ge=0)] = 1.0,
        anneal_steps: Annotated[int, Field(ge=0)] = 0,
        ema: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    ) -> None:
        super().__init__(penalty_weight, anneal_steps)
        self.ema = float(ema)
        self.running: dict[int, torch.Tensor] = {}

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if "features" not in batch:
            raise ConfigError(
                "fishr needs the head's input features: it trains heads and networks in the "
                "`ood` protocol, not members"
            )
        v = head_gradient_variances(logits, batch["y"], batch["features"], batch["env"])
        if self.ema > 0:
            ids, _ = env_index(batch["env"])
            rows = []
            for i, e in enumerate(ids.tolist()):
                prev = self.running.get(e)
                cur = v[..., i, :]
                cur = cur if prev is None else self.ema * prev + (1 - self.ema) * cur
                if self.training:
                    self.running[e] = cur.detach()
                rows.append(cur)
            v = torch.stack(rows, -2)
        return fishr_penalty(v)
