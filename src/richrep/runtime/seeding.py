"""Seeds: every random stream of a member derives from its seed and a purpose, so two seeds
differ in initialization *and* data order, and no two purposes share a stream.

Zhang & Bottou's released pretraining script never passed its seed flag, so all its "seeds"
were one; here a member's seed is part of its name and of every generator it uses.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def seed_hash(*parts: object) -> int:
    """A 63-bit integer derived from ``parts`` (stable across processes and platforms)."""
    blob = "|".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


def generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed_hash(*parts))
    return g


@contextlib.contextmanager
def seeded(*parts: object) -> Iterator[None]:
    """Run a block (e.g. a model's construction) under torch's global RNG seeded from ``parts``,
    restoring the global state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_hash(*parts))
        yield
