"""IRMv1 (Arjovsky, Bottou, Gulrajani & Lopez-Paz 2019, "Invariant Risk Minimization"):
the squared gradient of each environment's risk with respect to a dummy classifier scale
``w = 1.0``, summed over environments. It is zero when the classifier is optimal for every
environment at once (no rescaling of the logits lowers any environment's risk)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from richrep.objectives.base import Batch
from richrep.objectives.environments import EnvironmentObjective, env_index
from richrep.registries import OBJECTIVES


def irm_penalty(logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """Σ_e (∂ R_e(w · logits) / ∂w |_{w=1})², differentiable in the logits."""
    ids, pos = env_index(env)
    scale = torch.ones((), device=logits.device, requires_grad=True)
    out = logits.new_zeros((), dtype=torch.float32)
    for i in range(len(ids)):
        m = pos == i
        risk = F.cross_entropy(logits[m].float() * scale, y[m])
        (g,) = torch.autograd.grad(risk, scale, create_graph=True)
        out = out + g.pow(2)
    return out


@OBJECTIVES.register("irm")
class IRM(EnvironmentObjective):
    """ERM + ``penalty_weight`` · IRMv1 penalty (weight 1 for ``anneal_steps`` steps first)."""

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return irm_penalty(logits, batch["y"], batch["env"])
