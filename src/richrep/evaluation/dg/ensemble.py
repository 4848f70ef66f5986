"""``ensemble``: the mean of the K fine-tuned networks' softmax (Lakshminarayanan, Pritzel &
Blundell, NeurIPS 2017, "deep ensembles"). No training beyond the K ERM runs."""

from __future__ import annotations

from richrep.evaluation.dg.job import RULES, DGJob, Outcome, logit_accuracy, softmax_mean
from richrep.plugins import DG_METHODS


@DG_METHODS.register("ensemble", label="ensemble{k}", order=1, averages=False)
class Ensemble:
    """The K ERM runs' predictions averaged after the softmax."""

    def evaluate(self, job: DGJob) -> list[Outcome]:
        members = job.erm()
        return [
            Outcome(
                rule,
                logit_accuracy(
                    softmax_mean(job.logits("erm", rule, members, "test")), job.slices.test.y
                ),
            )
            for rule in RULES
        ]
