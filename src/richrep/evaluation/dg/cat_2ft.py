"""``cat_2ft``: catK's second-stage fine-tuning on the K fine-tuned networks ([2ft]cat, Zhang &
Bottou, ICML 2023): the K ERM runs' encoders side by side under a head initialized as their
heads scaled 1/K (the mean of their logits), then only that head trained briefly on the frozen
concatenated features of the training domains."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from richrep.data import Split
from richrep.evaluation.dg.job import RULES, DGJob, Outcome, logit_accuracy, outputs
from richrep.evaluation.finetune_train import concat_heads, fit_network, head_of
from richrep.plugins import DG_METHODS
from richrep.runtime.seeding import seed_hash


@DG_METHODS.register("cat_2ft", label="cat{k}-2ft", order=7, averages=False)
class Cat2FT:
    """[2ft]cat of the K ERM runs: ``head_epochs`` at ``head_lr`` on the concatenated
    features (0 epochs: the mean of the K networks' logits)."""

    def __init__(
        self,
        head_epochs: Annotated[int, Field(ge=0, le=1000)] = 2,
        head_lr: Annotated[float, Field(gt=0, le=10)] = 1e-3,
    ) -> None:
        self.head_epochs, self.head_lr = head_epochs, float(head_lr)

    def evaluate(self, job: DGJob) -> list[Outcome]:
        members = job.erm()
        out = []
        for rule in RULES:
            encoders = [m.model(rule).encoder for m in members]
            s = job.slices
            feats = {
                n: torch.cat(list(outputs(encoders, sp.x, job.device, job.dtype)), dim=1)
                for n, sp in (("train", s.train), ("val", s.val), ("test", s.test))
            }
            head = concat_heads([head_of(m.states[rule]) for m in members])
            if self.head_epochs:
                fit_network(
                    head,
                    Split(feats["train"], s.train.y),
                    Split(feats["val"], s.val.y),
                    lr=self.head_lr,
                    weight_decay=job.recipe.weight_decay,
                    epochs=self.head_epochs,
                    batch_size=job.recipe.batch_size,
                    seed=seed_hash("dg-cat-head", *job.where, rule),
                    device=torch.device("cpu"),
                    dtype=torch.float32,
                    select=False,
                )
            with torch.no_grad():
                acc = logit_accuracy(head.eval()(feats["test"]), s.test.y)
            out.append(Outcome(rule, acc, extra={"head_epochs": self.head_epochs}))
        return out
