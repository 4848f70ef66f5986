"""``finetune``: ERM fine-tuning, one network per run; its K runs give the mean over runs (the
"single" column of the rivals' table)."""

from __future__ import annotations

from richrep.evaluation.dg.job import RULES, DGJob, Outcome, logit_accuracy
from richrep.plugins import DG_METHODS


@DG_METHODS.register("finetune", label="finetune", order=0, averages=False)
class FineTuneERM:
    """ERM: the pre-trained network fine-tuned end to end on the training domains; one row
    per run (the mean over the K runs is the single network's accuracy)."""

    def evaluate(self, job: DGJob) -> list[Outcome]:
        members = job.erm()
        out = []
        for rule in RULES:
            logits = job.logits("erm", rule, members, "test")
            for r, (m, lg) in enumerate(zip(members, logits, strict=True)):
                extra = {"epoch": m.epochs[rule], "held_acc": m.held[rule]}
                out.append(Outcome(rule, logit_accuracy(lg, job.slices.test.y), r, extra=extra))
        return out
