"""``large_dropout``: fine-tuning with very large dropout (Zhang & Bottou, 2024, "Fine-tuning
with very large dropout"): dropout of rate ``rate`` (≈ 0.9) on the penultimate representation
(the encoder's features) while fine-tuning, none at evaluation; K restarts, one row each."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from richrep.evaluation.dg.job import RULES, DGJob, DropoutClassifier, Outcome, logit_accuracy
from richrep.plugins import DG_METHODS


@DG_METHODS.register("large_dropout", label="large_dropout", order=5, averages=False)
class LargeDropout:
    """K runs of ERM with dropout ``rate`` on the features, from the pre-trained network."""

    def __init__(self, rate: Annotated[float, Field(ge=0, lt=1)] = 0.9) -> None:
        self.rate = float(rate)

    def evaluate(self, job: DGJob) -> list[Outcome]:
        def make() -> list:
            return [
                job.train(
                    lambda: DropoutClassifier(job.network("erm"), self.rate),
                    job.recipe,
                    f"large_dropout-{r}",
                )
                for r in range(job.k)
            ]

        name = f"large_dropout|{self.rate}"
        members = job.family(name, make)
        out = []
        for rule in RULES:
            logits = job.logits(name, rule, members, "test")
            for r, (m, lg) in enumerate(zip(members, logits, strict=True)):
                extra = {"rate": self.rate, "epoch": m.epochs[rule], "held_acc": m.held[rule]}
                out.append(Outcome(rule, logit_accuracy(lg, job.slices.test.y), r, extra=extra))
        return out
