"""``uniform_soup``: the K fine-tuned networks' weights averaged (Wortsman et al., ICML 2022,
"model soups"). No training beyond the K ERM runs, which start from one initialization."""

from __future__ import annotations

from richrep.evaluation.dg.job import RULES, DGJob, Outcome
from richrep.evaluation.dg.weights import midpoint, soup
from richrep.plugins import DG_METHODS


@DG_METHODS.register("uniform_soup", label="uniform_soup{k}", order=2, averages=True)
class UniformSoup:
    """The uniform average of the K ERM runs' weights; ``midpoint_accuracy`` rows give the
    network halfway between two runs (linear mode connectivity)."""

    def evaluate(self, job: DGJob) -> list[Outcome]:
        members = job.erm()
        out = []
        for rule in RULES:
            out.append(Outcome(rule, job.score(soup(members, rule), "test")))
            lmc = midpoint(job, members, rule)
            if lmc:
                out.append(Outcome(rule, lmc["midpoint"], metric="midpoint_accuracy", extra=lmc))
        return out
