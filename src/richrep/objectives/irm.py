"""IRMv1 (Arjovsky, Bottou, Gulrajani & Lopez-Paz 2019, "Invariant Risk Minimization"):
the squared gradient of each environment's risk with respect to a dummy classifier scale
``w = 1.0``, summed over environments. It is zero when the classifier is optimal for every
environment at once (no rescaling of the logits lowers any environment's risk).

The gradient has a closed form, ``∂ CE(w l, y) / ∂w |_{w=1} = Σ_c (softmax(l)_c - [y = c]) l_c``
per example, so the penalty is computed without a nested backward pass (and for many heads at
once)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from richrep.objectives.base import Batch
from richrep.objectives.environments import EnvironmentObjective, env_means
from richrep.plugins import OBJECTIVES


def irm_penalty(logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """Σ_e (∂ R_e(w · logits) / ∂w |_{w=1})² for logits (..., N, C): (...)."""
    lf = logits.float()
    p = lf.softmax(-1) - F.one_hot(y, lf.shape[-1]).to(lf)
    return env_means((p * lf).sum(-1), env).pow(2).sum(-1)


@OBJECTIVES.register("irm")
class IRM(EnvironmentObjective):
    """ERM + ``penalty_weight`` · IRMv1 penalty (weight 1 for ``anneal_steps`` steps first)."""

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return irm_penalty(logits, batch["y"], batch["env"])
