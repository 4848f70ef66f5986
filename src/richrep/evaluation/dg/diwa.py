"""``diwa``: Diverse Weight Averaging (Ramé et al., NeurIPS 2022): K runs from one
linear-probed initialization (LP: the pre-trained encoder frozen, a head trained on the
training domains), each with hyperparameters drawn at random from a stated grid, then their
weights averaged uniformly."""

from __future__ import annotations

import copy
from typing import Annotated

from pydantic import Field
from torch import nn

from richrep.data.splits import rng
from richrep.evaluation.dg.job import RULES, DGJob, Outcome, Recipe, Trained
from richrep.evaluation.dg.weights import midpoint, soup
from richrep.plugins import DG_METHODS

Positive = Annotated[float, Field(gt=0, le=10)]
Decay = Annotated[float, Field(ge=0, le=1)]


@DG_METHODS.register("diwa", label="diwa{k}", order=4, averages=True)
class DiWA:
    """K runs from the LP initialization, run r with (lr, weight decay) drawn uniformly from
    ``lrs`` × ``weight_decays`` (seeded by the job and r), weights averaged uniformly."""

    def __init__(
        self,
        lrs: Annotated[list[Positive], Field(min_length=1)] = [0.003, 0.01, 0.03],  # noqa: B006
        weight_decays: Annotated[list[Decay], Field(min_length=1)] = [0.0, 1e-4],  # noqa: B006
    ) -> None:
        self.lrs, self.weight_decays = list(lrs), list(weight_decays)

    def runs(self, job: DGJob) -> list[Trained]:
        def make() -> list[Trained]:
            init = job.lp_state()
            out = []
            for r in range(job.k):
                g = rng(0, "diwa", *job.where, r)
                lr = self.lrs[int(g.integers(len(self.lrs)))]
                wd = self.weight_decays[int(g.integers(len(self.weight_decays)))]
                recipe = Recipe(lr, wd, job.recipe.epochs, job.recipe.batch_size)
                out.append(job.train(lambda: lp_network(job, init), recipe, f"diwa-{r}"))
            return out

        return job.family(f"diwa|{self.lrs}|{self.weight_decays}", make)

    def evaluate(self, job: DGJob) -> list[Outcome]:
        members = self.runs(job)
        out = []
        for rule in RULES:
            extra = {
                "hyperparameters": [
                    {"lr": m.params["lr"], "weight_decay": m.params["weight_decay"]}
                    for m in members
                ]
            }
            out.append(Outcome(rule, job.score(soup(members, rule), "test"), extra=extra))
            lmc = midpoint(job, members, rule)
            if lmc:
                out.append(Outcome(rule, lmc["midpoint"], metric="midpoint_accuracy", extra=lmc))
        return out


def lp_network(job: DGJob, state: dict) -> nn.Module:
    """The pre-trained network with the LP head (a fresh copy)."""
    model = job.network("lp")
    model.load_state_dict(copy.deepcopy(state))
    return model
