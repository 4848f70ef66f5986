"""Representations: what a probe sees. ``single`` (one seed's penultimate features), ``cat``
(K seeds' features concatenated, Zhang & Bottou 2023), the ``wide`` / ``wide_dim`` / ``joint``
baselines, and two floors every comparison needs: ``input`` (the raw input, flattened) and
``random`` (catK of the same encoders, untrained).

Features are computed in eval mode without gradients, in large batches, and cached by
(member, data hash): a catK never extracts a member's features twice, whatever K or subset.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richrep.data import Split
from richrep.data.splits import rng
from richrep.training.device import autocast
from richrep.training.loop import uses_channels_last
from richrep.training.members import Member


@dataclass(frozen=True)
class Representation:
    """A named way to turn inputs into features.

    ``parts`` are the atomic encoders (member names) whose features are concatenated; the
    ``input`` floor has none. ``params`` counts the encoders' parameters; ``dim`` the features.
    """

    kind: str  # single | cat | wide | wide_dim | joint | input | random
    k: int
    seeds: tuple[int, ...]
    parts: tuple[str, ...]
    dim: int
    params: int
    label: str = field(default="")

    @property
    def id(self) -> str:
        return self.label or f"{self.kind}{self.k}[{','.join(map(str, self.seeds))}]"


class FeatureCache:
    """Features by (part, split hash): kept in memory up to ``budget_bytes`` (least recently
    used dropped first), optionally also on disk as safetensors under ``directory``."""

    def __init__(self, budget_bytes: int = 4 << 30, directory: Path | None = None) -> None:
        self.budget = budget_bytes
        self.directory = directory
        self._mem: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> torch.Tensor | None:
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits += 1
            return self._mem[key]
        if self.directory is not None:
            from richrep.errors import StoreError
            from richrep.store import load_tensors

            path = self._path(key)
            if path.exists():
                try:
                    t = load_tensors(path)[0]["features"]
                except StoreError:
                    return None
                self.hits += 1
                self._put(key, t)
                return t
        return None

    def put(self, key: tuple[str, str], value: torch.Tensor) -> None:
        self.misses += 1
        if self.directory is not None:
            from richrep.store import save_tensors

            save_tensors(self._path(key), {"features": value})
        self._put(key, value)

    def _put(self, key: tuple[str, str], value: torch.Tensor) -> None:
        self._mem[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.budget and len(self._mem) > 1:
            _, old = self._mem.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def _path(self, key: tuple[str, str]) -> Path:
        assert self.directory is not None
        return self.directory / f"{key[0]}--{key[1]}.safetensors"


def batch_size_for(encoder: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Extraction batch size: on CPU, as many examples as keep the largest activation within
    ~24 MB (cache-sized; batches of 4,096 CNN images ran 2.4× slower than 128 here, see
    ``benchmarks/extract.py``), a power of two in [64, 4096]; 2,048 on accelerators."""
    if device.type != "cpu":
        return 2048
    largest = [0]

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output[0].numel() * 4)

    hooks = [m.register_forward_hook(hook) for m in encoder.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            encoder.eval().cpu()(x[:1].float().cpu())
    finally:
        for h in hooks:
            h.remove()
    fit = (24 << 20) // max(largest[0], 1)
    return int(min(4096, max(64, 1 << max(fit, 1).bit_length() - 1)))


@torch.no_grad()
def extract(
    encoder: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Features ``(N, d)`` of ``x`` (float32, on CPU), eval mode, no gradients, batched
    (``batch_size_for`` unless given), channels_last for convolutions, autocast to ``dtype``."""
    if len(x) == 0:
        return torch.zeros(0, 0)
    encoder.eval()
    bs = batch_size or batch_size_for(encoder, x, device)
    encoder.to(device)
    channels_last = uses_channels_last(encoder, x)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    out = []
    for xb in x.split(bs):
        xb = xb.to(device, non_blocking=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            out.append(encoder(xb).float().cpu())
    if channels_last:
        encoder.to(memory_format=torch.contiguous_format)
    return torch.cat(out)


class Featurizer:
    """Turns (representation, split) into features, through the cache."""

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        *,
        device: torch.device,
        dtype: torch.dtype,
        cache: FeatureCache | None = None,
    ) -> None:
        self.encoders = encoders
        self.device = device
        self.dtype = dtype
        self.cache = cache or FeatureCache()

    def part(self, name: str, split: Split) -> torch.Tensor:
        key = (name, split.hash)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        feats = extract(self.encoders[name], split.x, device=self.device, dtype=self.dtype)
        self.cache.put(key, feats)
        return feats

    def __call__(self, rep: Representation, split: Split) -> torch.Tensor:
        if rep.kind == "input":
            return split.x.flatten(1).float()
        return torch.cat([self.part(p, split) for p in rep.parts], dim=1)


def seed_subsets(
    seeds: Sequence[int], k: int, n_subsets: int, seed: int = 0
) -> list[tuple[int, ...]]:
    """Seed subsets of size ``k`` for catK: disjoint groups first (a shuffled partition), then
    distinct random subsets, up to ``n_subsets``; all of them when K equals the seed count."""
    seeds = list(seeds)
    if k >= len(seeds):
        return [tuple(seeds)]
    g = rng(seed, "subsets", k)
    order = [seeds[i] for i in g.permutation(len(seeds))]
    chosen = [tuple(sorted(order[i * k : (i + 1) * k])) for i in range(len(seeds) // k)][:n_subsets]
    all_sets = [c for c in itertools.combinations(sorted(seeds), k) if c not in chosen]
    for i in g.permutation(len(all_sets)):
        if len(chosen) >= n_subsets:
            break
        chosen.append(all_sets[i])
    return chosen


def plan_representations(
    members: Sequence[Member],
    meta: dict[str, dict],
    *,
    input_dim: int,
    subsets: int,
    floors: Sequence[str],
    seed: int = 0,
) -> list[Representation]:
    """Every representation of a run: floors, each single, catK subsets for K = 2..N, baselines.

    ``members`` are the run's members; ``meta`` their checkpoint sidecars (failed members are
    left out, and catK draws only from the seeds that trained).
    """
    ok = [m for m in members if m.name in meta and "failed" not in meta[m.name]]
    singles = {m.seed: m for m in ok if m.kind == "single"}
    seeds = sorted(singles)
    d = {s: meta[singles[s].name]["feature_dim"] for s in seeds}
    p = {s: meta[singles[s].name]["encoder_params"] for s in seeds}
    reps: list[Representation] = []
    if "input" in floors:
        reps.append(Representation("input", 0, (), (), input_dim, 0))
    if "random" in floors and seeds:
        reps.append(
            Representation(
                "random",
                len(seeds),
                tuple(seeds),
                tuple(f"random-s{s}" for s in seeds),
                sum(d.values()),
                sum(p.values()),
            )
        )
    for k in range(1, len(seeds) + 1):
        for sub in seed_subsets(seeds, k, len(seeds) if k == 1 else subsets, seed):
            kind = "single" if k == 1 else "cat"
            reps.append(
                Representation(
                    kind,
                    k,
                    sub,
                    tuple(singles[s].name for s in sub),
                    sum(d[s] for s in sub),
                    sum(p[s] for s in sub),
                )
            )
    for m in ok:
        if m.kind != "single":
            mm = meta[m.name]
            reps.append(
                Representation(
                    m.kind, m.k, (m.seed,), (m.name,), mm["feature_dim"], mm["encoder_params"]
                )
            )
    return reps
