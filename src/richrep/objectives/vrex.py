"""V-REx (Krueger et al., ICML 2021, "Out-of-Distribution Generalization via Risk
Extrapolation"): the mean of the environments' risks plus ``penalty_weight`` times their
variance."""

from __future__ import annotations

import torch

from richrep.objectives.base import Batch
from richrep.objectives.environments import EnvironmentObjective, env_risks
from richrep.plugins import OBJECTIVES


def vrex_penalty(risks: torch.Tensor) -> torch.Tensor:
    """The (population) variance of the environments' risks (..., E): (...)."""
    return (risks - risks.mean(-1, keepdim=True)).pow(2).mean(-1)


@OBJECTIVES.register("vrex")
class VREx(EnvironmentObjective):
    """Mean environment risk + ``penalty_weight`` · their variance (annealed like IRM)."""

    def risk(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return env_risks(logits, batch["y"], batch["env"]).mean(-1)

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return vrex_penalty(env_risks(logits, batch["y"], batch["env"]))
