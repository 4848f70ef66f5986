"""One held-out domain of the ``domain_generalization`` protocol: its data (:class:`Slices`),
the fine-tuning runs the methods share (:class:`DGJob`), each run's chosen weights under both
selection rules (:class:`Trained`), and every run's predictions in one pass over a split.

A run is the pre-trained network and a head trained on the training domains with the one
training loop (:class:`~richrep.training.loop.Loop`), SGD with momentum 0.9 and a cosine
schedule, scored after every epoch on the training domains' held-out examples and on the
test domain's held-out (oracle) examples by two :class:`~richrep.training.hooks.BestEpoch`
hooks: the *training-domain* rule keeps the epoch best on the first, the *oracle* rule the
epoch best on the second. Nothing of the test domain reaches training or the first rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split, Task
from richrep.data.task import hash_tensors
from richrep.evaluation.finetune_train import accuracy_and_loss, fit_network, network
from richrep.evaluation.run_view import RunView
from richrep.models import Classifier
from richrep.objectives import CrossEntropy
from richrep.representations.features import extract
from richrep.runtime.device import autocast
from richrep.runtime.seeding import seed_hash, seeded
from richrep.training.batches import EpochOrder
from richrep.training.hooks import BestEpoch
from richrep.training.loop import Loop
from richrep.training.step import Step, lr_at, make_optimizer, uses_channels_last

RULES = ("train-domain", "oracle")
EVAL_BATCH = 512
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Slices:
    """One held-out domain ``domain``: ``train`` (the other domains' training examples),
    ``val`` (their held-out examples: training-domain validation), ``oracle`` (the test
    domain's held-out examples: the oracle rule's selection set) and ``test`` (the test
    domain's test examples: what every row reports)."""

    domain: int
    name: str
    train: Split
    val: Split
    oracle: Split
    test: Split

    def held(self, rule: str) -> Split:
        """The split ``rule`` selects on."""
        return self.val if rule == "train-domain" else self.oracle


def leave_one_out_slices(target: Task, domain: int, name: str) -> Slices:
    """The four splits of leave-one-domain-out with ``domain`` held out."""
    tr, va, te = target.train, target.val, target.test
    assert tr.env is not None and va.env is not None and te.env is not None
    return Slices(
        domain,
        name,
        tr.subset(torch.nonzero(tr.env != domain).flatten()),
        va.subset(torch.nonzero(va.env != domain).flatten()),
        va.subset(torch.nonzero(va.env == domain).flatten()),
        te.subset(torch.nonzero(te.env == domain).flatten()),
    )


@dataclass(frozen=True)
class Recipe:
    """How a run trains: learning rate, weight decay, epochs, batch size."""

    lr: float
    weight_decay: float
    epochs: int
    batch_size: int


@dataclass
class Trained:
    """One fine-tuning run: ``make()`` builds its architecture, ``init`` fingerprints its
    starting weights, ``states[rule]`` are the weights of the epoch ``rule`` chose (``epochs``)
    and ``held[rule]`` their accuracy on the rule's selection split."""

    name: str
    make: Callable[[], nn.Module]
    init: str
    states: dict[str, State] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    failed: str = ""

    def model(self, rule: str) -> nn.Module:
        m = self.make()
        m.load_state_dict(self.states[rule])
        return m.eval()


class DropoutClassifier(Classifier):
    """A classifier with dropout of rate ``rate`` on the penultimate representation (the
    encoder's features), active only in training mode (Zhang & Bottou 2024). Its state has
    the keys of :class:`~richrep.models.Classifier`."""

    def __init__(self, base: Classifier, rate: float) -> None:
        nn.Module.__init__(self)
        self.encoder, self.head = base.encoder, base.head
        self.dropout = nn.Dropout(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x)))


def fingerprint(state: State) -> str:
    """A content hash of a state dict (names and values)."""
    keys = sorted(state)
    return hash_tensors(*(state[k].float().reshape(-1) for k in keys), extra="|".join(keys))


@torch.no_grad()
def outputs(
    models: Sequence[nn.Module], x: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Every model's outputs ``(K, N, ...)`` on ``x`` in one pass over it: each batch is read
    once and given to the K models (eval mode, autocast to ``dtype``), float32 on CPU."""
    for m in models:
        m.eval().to(device)
    cl = any(uses_channels_last(m, x) for m in models)
    out = []
    for xb in x.split(EVAL_BATCH):
        xb = xb.to(device)
        if cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            out.append(torch.stack([m(xb).float().cpu() for m in models]))
    if not out:
        return torch.zeros(len(models), 0, 0)
    return torch.cat(out, dim=1)


def logit_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).double().mean()) if len(y) else float("nan")


class DGJob:
    """Leave-one-domain-out for one held-out domain and one trial: the slices, the run's
    pre-trained network (``rep``'s parts), K, the base recipe, and the families of runs the
    methods share (``family``), made once each."""

    def __init__(
        self,
        run: RunView,
        parts: Sequence[str],
        classes: int,
        slices: Slices,
        *,
        k: int,
        recipe: Recipe,
        lp: Recipe,
        where: tuple[Any, ...],
        shared_init: bool = True,
    ) -> None:
        self.run, self.parts, self.classes, self.slices = run, tuple(parts), classes, slices
        self.k, self.recipe, self.lp, self.where = k, recipe, lp, where
        self.shared_init = shared_init
        self.device, self.dtype = run.device, run.dtype
        self._families: dict[str, list[Trained]] = {}
        self._outputs: dict[tuple[str, str, str], torch.Tensor] = {}
        self._lp: State | None = None

    # -- networks ---------------------------------------------------------------------------
    def network(self, *salt: object) -> Classifier:
        """A copy of the pre-trained network under a new head seeded by (job, ``salt``)."""
        return network(self.run, self.parts, self.classes, "dg", *self.where, *salt)

    def lp_state(self) -> State:
        """The linear-probed network (LP): the pre-trained encoder, frozen, and a head trained
        on its features of the training domains (chosen on their held-out examples), made
        once per job; DiWA's and LP-FT's shared initialization."""
        if self._lp is None:
            model = self.network("lp")
            s = self.slices
            f = {
                n: extract(model.encoder, sp.x, device=self.device, dtype=self.dtype)
                for n, sp in (("train", s.train), ("val", s.val))
            }
            fit_network(
                model.head,
                Split(f["train"], s.train.y),
                Split(f["val"], s.val.y),
                lr=self.lp.lr,
                weight_decay=self.lp.weight_decay,
                epochs=self.lp.epochs,
                batch_size=self.lp.batch_size,
                seed=seed_hash("dg-lp-order", *self.where),
                device=torch.device("cpu"),
                dtype=torch.float32,
            )
            self._lp = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self._lp

    def family(self, name: str, make: Callable[[], list[Trained]]) -> list[Trained]:
        """The runs of family ``name`` (e.g. ``erm``), trained by ``make()`` the first time."""
        if name not in self._families:
            self._families[name] = make()
        return self._families[name]

    def erm(self) -> list[Trained]:
        """K runs of ERM fine-tuning from the pre-trained network and one head initialization
        (different data orders); with ``shared_init`` false each restart has its own head."""

        def make() -> list[Trained]:
            return [
                self.train(
                    lambda r=r: self.network("erm", *(() if self.shared_init else (r,))),
                    self.recipe,
                    f"erm-{r}",
                )
                for r in range(self.k)
            ]

        return self.family("erm", make)

    # -- training ---------------------------------------------------------------------------
    def train(self, make: Callable[[], nn.Module], recipe: Recipe, name: str) -> Trained:
        """One run: ``make()`` trained on the training domains with ``recipe``, its epoch
        chosen by both rules."""
        model = make().to(self.device).train()
        out = Trained(name, make, fingerprint(model.state_dict()), params=vars(recipe).copy())
        hooks = {
            rule: BestEpoch(partial(self._score, split=self.slices.held(rule)), True)
            for rule in RULES
        }
        failed = train_loop(
            model,
            self.slices.train,
            recipe,
            list(hooks.values()),
            seed_hash("dg-order", *self.where, name),
            device=self.device,
            dtype=self.dtype,
        )
        for rule, h in hooks.items():
            if h.state is not None:
                out.states[rule], out.held[rule], out.epochs[rule] = h.state, h.acc, h.epoch
        if failed or len(out.states) < len(RULES):
            out.failed = failed or "no epoch finished"
        return out

    def _score(self, model: nn.Module, split: Split) -> tuple[float, float]:
        logits = outputs([model], split.x, self.device, self.dtype)[0]
        model.train()
        return accuracy_and_loss(logits, split.y)

    # -- predictions ------------------------------------------------------------------------
    def logits(
        self, family: str, rule: str, members: Sequence[Trained], split: str
    ) -> torch.Tensor:
        """``(K, N, C)``: the members' logits on a split of the slices (``test``, ``val``,
        ``oracle``), all K computed in one pass over it, cached per (family, rule, split)."""
        key = (family, rule, split)
        if key not in self._outputs:
            data = getattr(self.slices, split)
            self._outputs[key] = outputs(
                [m.model(rule) for m in members], data.x, self.device, self.dtype
            )
        return self._outputs[key]

    def score(self, model: nn.Module, split: str) -> float:
        """``model``'s accuracy on a split of the slices."""
        data = getattr(self.slices, split)
        return logit_accuracy(outputs([model], data.x, self.device, self.dtype)[0], data.y)


def train_loop(
    model: nn.Module,
    train: Split,
    recipe: Recipe,
    hooks: Sequence[BestEpoch],
    seed: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> str:
    """Train every parameter of ``model`` in place on ``train`` with the one training loop
    (cross-entropy, SGD momentum 0.9, cosine over ``recipe.epochs``); its dropout masks are
    drawn from a generator seeded by ``seed``. Returns why it stopped early ("" if it did not)."""
    cfg = TrainingConfig(
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        optimizer="sgd",
        momentum=0.9,
        schedule="cosine",
    )
    batches = EpochOrder(train, recipe.batch_size, device)
    step = Step(
        [model],
        [make_optimizer(model, cfg)],
        [CrossEntropy()],
        device=device,
        dtype=dtype,
        channels_last=uses_channels_last(model, batches.x),
    )
    loop = Loop(
        step,
        batches,
        train.y.to(device),
        [{}],
        [seed],
        epochs=recipe.epochs,
        lr=partial(lr_at, cfg=cfg),
        hooks=hooks,
    )
    with seeded("dg-dropout", seed):
        loop.run()
    if loop.failed:
        epoch, loss = loop.failed[0]
        return f"the training loss became {loss} in epoch {epoch + 1} at lr {recipe.lr}"
    return ""


def softmax_mean(logits: torch.Tensor) -> torch.Tensor:
    """The ensemble's prediction: the mean over members (dim 0) of their softmax."""
    return F.softmax(logits.float(), dim=-1).mean(0)


@dataclass(frozen=True)
class Outcome:
    """One measurement of a method on the held-out domain: ``value`` of ``metric`` under
    selection ``rule``; ``draw`` numbers the method's restarts (0 for one network per trial)."""

    rule: str
    value: float
    draw: int = 0
    metric: str = "accuracy"
    extra: dict[str, Any] = field(default_factory=dict)
