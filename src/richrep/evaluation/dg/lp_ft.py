"""``lp_ft``: linear probing then fine-tuning (Kumar et al., ICLR 2022): the head is trained
first on the frozen pre-trained features (the LP initialization DiWA also starts from), then
every parameter; K restarts (different data orders), one row each."""

from __future__ import annotations

from richrep.evaluation.dg.diwa import lp_network
from richrep.evaluation.dg.job import RULES, DGJob, Outcome, logit_accuracy
from richrep.plugins import DG_METHODS


@DG_METHODS.register("lp_ft", label="lp_ft", order=6, averages=False)
class LPFT:
    """K runs of full fine-tuning from the LP initialization with the protocol's recipe."""

    def evaluate(self, job: DGJob) -> list[Outcome]:
        def make() -> list:
            init = job.lp_state()
            return [
                job.train(lambda: lp_network(job, init), job.recipe, f"lp_ft-{r}")
                for r in range(job.k)
            ]

        members = job.family("lp_ft", make)
        out = []
        for rule in RULES:
            logits = job.logits("lp_ft", rule, members, "test")
            for r, (m, lg) in enumerate(zip(members, logits, strict=True)):
                extra = {"epoch": m.epochs[rule], "held_acc": m.held[rule]}
                out.append(Outcome(rule, logit_accuracy(lg, job.slices.test.y), r, extra=extra))
        return out
