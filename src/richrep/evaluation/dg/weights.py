"""Averaging the weights of fine-tuned networks (model soups, DiWA) and the midpoint between two
of them (linear mode connectivity).

Weights average into a good network only when the networks lie in one basin: fine-tuned from
the same initialization (Neyshabur et al. 2020; Frankle et al. 2020; Wortsman et al. 2022).
:func:`average` therefore refuses networks of different architectures, and networks that did
not start from the same weights, saying why.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from richrep.errors import ConfigError
from richrep.evaluation.dg.job import DGJob, State, Trained


def check_averageable(members: Sequence[Trained], rule: str) -> None:
    """Raise :class:`ConfigError` unless every member has weights under ``rule``, one
    architecture (the same parameter names and shapes) and one starting point."""
    if not members:
        raise ConfigError("a weight average needs at least one network")
    first = members[0]
    for m in members:
        if rule not in m.states:
            raise ConfigError(f"{m.name} has no weights to average ({m.failed or 'not trained'})")
    ref = first.states[rule]
    for m in members[1:]:
        st = m.states[rule]
        if set(st) != set(ref):
            only = sorted(set(st) ^ set(ref))[:3]
            raise ConfigError(
                f"cannot average the weights of {first.name} and {m.name}: they are different "
                f"architectures (parameters {only} are in one and not the other); weights "
                f"average only between networks of one architecture"
            )
        for key, v in st.items():
            if v.shape != ref[key].shape:
                raise ConfigError(
                    f"cannot average the weights of {first.name} and {m.name}: they are "
                    f"different architectures ({key!r} has shape {tuple(v.shape)} in one and "
                    f"{tuple(ref[key].shape)} in the other)"
                )
        if m.init != first.init:
            raise ConfigError(
                f"cannot average the weights of {first.name} and {m.name}: they did not start "
                f"from the same initialization (initial weights {first.init} and {m.init}). "
                f"Networks trained from different starting points need not lie in one basin, "
                f"so their average is not a network between them (linear mode connectivity, "
                f"Frankle et al. 2020); start them from one network (shared_head_init: true)"
            )


def average(states: Sequence[State], weights: Sequence[float] | None = None) -> State:
    """The (weighted) mean of state dicts of one architecture: floating-point tensors
    averaged, integer buffers (BatchNorm's batch counter) taken from the first."""
    w = [1.0 / len(states)] * len(states) if weights is None else list(weights)
    out: State = {}
    for key, v in states[0].items():
        if torch.is_floating_point(v):
            acc = sum(wi * s[key].double() for wi, s in zip(w, states, strict=True))
            out[key] = acc.to(v.dtype)  # type: ignore[union-attr]
        else:
            out[key] = v.clone()
    return out


def soup(members: Sequence[Trained], rule: str) -> nn.Module:
    """The network whose weights are the uniform average of ``members``' (checked first)."""
    check_averageable(members, rule)
    model = members[0].make()
    model.load_state_dict(average([m.states[rule] for m in members]))
    return model.eval()


def midpoint(job: DGJob, members: Sequence[Trained], rule: str) -> dict[str, float]:
    """Linear mode connectivity of the first two members: test accuracy of the network halfway
    between them (``midpoint``) and the mean of theirs (``endpoints``)."""
    if len(members) < 2:
        return {}
    a, b = members[0], members[1]
    mid = job.score(soup([a, b], rule), "test")
    ends = (job.score(a.model(rule), "test") + job.score(b.model(rule), "test")) / 2
    return {"midpoint": mid, "endpoints": ends}


def greedy(
    job: DGJob, members: Sequence[Trained], rule: str
) -> tuple[list[int], float, list[float]]:
    """Wortsman et al. (2022)'s greedy soup: members sorted by accuracy on the rule's held-out
    split (best first); each is added to the soup only if that accuracy does not drop.
    Returns (indices of the ingredients, the soup's held-out accuracy, each member's)."""
    check_averageable(members, rule)
    split = "val" if rule == "train-domain" else "oracle"
    held = job.logits("greedy:" + members[0].name, rule, members, split)
    y = getattr(job.slices, split).y
    own = [float((h.argmax(-1) == y).double().mean()) for h in held]
    order = sorted(range(len(members)), key=lambda i: (-own[i], i))
    chosen, best = [order[0]], own[order[0]]
    for i in order[1:]:
        acc = job.score(soup([members[j] for j in [*chosen, i]], rule), split)
        if acc >= best:
            chosen.append(i)
            best = acc
    return chosen, best, own
