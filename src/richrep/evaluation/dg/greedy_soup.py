"""``greedy_soup``: Wortsman et al. (ICML 2022)'s greedy soup of the K fine-tuned networks:
sorted by held-out accuracy, each added only if the soup's held-out accuracy does not drop.
Held out means the selection rule's split: the training domains' held-out examples, or (the
oracle) the test domain's."""

from __future__ import annotations

from richrep.evaluation.dg.job import RULES, DGJob, Outcome
from richrep.evaluation.dg.weights import greedy, midpoint, soup
from richrep.plugins import DG_METHODS


@DG_METHODS.register("greedy_soup", label="greedy_soup{k}", order=3, averages=True)
class GreedySoup:
    """The greedy soup of the K ERM runs; rows record the ingredients chosen."""

    def evaluate(self, job: DGJob) -> list[Outcome]:
        members = job.erm()
        out = []
        for rule in RULES:
            chosen, held, own = greedy(job, members, rule)
            acc = job.score(soup([members[i] for i in chosen], rule), "test")
            extra = {"ingredients": chosen, "held_acc": held, "member_held_acc": own}
            out.append(Outcome(rule, acc, extra=extra))
            lmc = midpoint(job, members, rule)
            if lmc:
                out.append(Outcome(rule, lmc["midpoint"], metric="midpoint_accuracy", extra=lmc))
        return out
