"""Feature extraction and the feature cache.

Features are computed in eval mode without gradients, in cache-sized batches, channels_last
for convolutions, autocast to the run's precision, and cached by (part, part fingerprint,
data hash): in memory (least recently used dropped first) and, for a run, on disk in the run
folder's ``features/`` as safetensors with sha256 sidecars, so a resumed run, ``--only
evaluate`` and ``richrep analyze`` never extract a member's features twice. A cached file that
does not match its sha256 is moved to quarantine and recomputed.

A split whose features would take more than a quarter of ``runtime.memory`` is extracted batch
by batch straight into its cache file (never whole in memory), and handed to a caller that asks
for it lazily (the transfer protocol's linear probe) as a row source read on demand.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richrep.data import Split
from richrep.data.feature_rows import FileRows, RowSource, concat_columns
from richrep.data.images import is_lazy
from richrep.data.task import Rows
from richrep.errors import StoreError
from richrep.representations import Representation
from richrep.runtime.device import autocast
from richrep.runtime.memory import MemoryBudget
from richrep.store import load_tensors, quarantine, save_tensors, sidecar
from richrep.store.tensor_file import TensorFileWriter
from richrep.training.loop import uses_channels_last


class FeatureCache:
    """Features by key: kept in memory up to ``budget_bytes`` (least recently used dropped
    first) and, with ``directory``, on disk as safetensors with sha256 sidecars.

    Safe to share between threads: :meth:`claim` makes one thread compute a key while the
    others asking for it wait for its result (suite entries evaluated in parallel share their
    targets' test sets and the source's training data)."""

    def __init__(self, budget_bytes: int = 4 << 30, directory: Path | None = None) -> None:
        self.budget = budget_bytes
        self.directory = directory
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self._keys: dict[str, threading.Lock] = {}
        self.hits = 0  # served from memory or disk
        self.disk_hits = 0
        self.misses = 0  # extracted

    def claim(self, key: str) -> threading.Lock:
        """The lock of ``key``: hold it while looking a key up and computing it."""
        with self._lock:
            return self._keys.setdefault(key, threading.Lock())

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                self.hits += 1
                return self._mem[key]
        if self.directory is not None:
            path = self._path(key)
            if path.exists() or sidecar(path).exists():
                try:
                    t = load_tensors(path)[0]["features"].float()
                except StoreError as e:
                    quarantine(path, f"cached features: {e}")
                    return None
                with self._lock:
                    self.hits += 1
                    self.disk_hits += 1
                self._put(key, t)
                return t
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        with self._lock:
            self.misses += 1
        if self.directory is not None:
            save_tensors(self._path(key), {"features": _compact(value)}, {"key": key})
        self._put(key, value)

    def _put(self, key: str, value: torch.Tensor) -> None:
        with self._lock:
            if key in self._mem:
                return
            self._mem[key] = value
            self._bytes += value.numel() * value.element_size()
            while self._bytes > self.budget and len(self._mem) > 1:
                _, old = self._mem.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()

    def on_disk(self, key: str) -> bool:
        """Whether ``key`` has a file (or a sidecar) in the cache folder."""
        if self.directory is None:
            return False
        path = self._path(key)
        return path.exists() or sidecar(path).exists()

    def source(self, key: str, count: bool = True) -> FileRows | None:
        """The cached features of ``key`` on disk as a row source, read on demand (checked
        against the sidecar first; a bad file is quarantined), or None."""
        if not self.on_disk(key):
            return None
        path = self._path(key)
        try:
            rows = FileRows(path)
        except StoreError as e:
            quarantine(path, f"cached features: {e}")
            return None
        if count:
            self.count_disk_hit()
        return rows

    def count_disk_hit(self) -> None:
        with self._lock:
            self.hits += 1
            self.disk_hits += 1

    def write(
        self, key: str, shape: tuple[int, int], batches: Iterable[torch.Tensor], bf16: bool
    ) -> FileRows:
        """Write the features of ``key`` batch by batch (never the whole matrix in memory):
        as bfloat16 when ``bf16`` and every batch is exactly that (features extracted under bf16
        autocast), else float32 (a batch that is not restarts the file in float32)."""
        assert self.directory is not None
        with self._lock:
            self.misses += 1
        path = self._path(key)
        dtype = torch.bfloat16 if bf16 else torch.float32
        with TensorFileWriter(path, "features", shape, dtype, {"key": key}) as w:
            for batch in batches:
                if dtype == torch.bfloat16 and not torch.equal(batch.to(dtype).float(), batch):
                    raise _NotBf16
                w.write(batch)
            w.close()
        return FileRows(path)

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.safetensors"


class _NotBf16(Exception):
    """A batch of features is not exactly bfloat16: the file is written again in float32."""


def _compact(x: torch.Tensor) -> torch.Tensor:
    """``x`` as bfloat16 when that loses nothing (features extracted under bf16 autocast are
    bf16 values), else as it is: half the disk for the common case."""
    if x.dtype == torch.float32 and x.numel():
        b = x.to(torch.bfloat16)
        if torch.equal(b.float(), x):
            return b
    return x


def batch_size_for(encoder: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Extraction batch size: on CPU, as many examples as keep the largest activation within
    ~24 MB (cache-sized: far larger CPU batches run slower, see ``benchmarks/extract.py``), a
    power of two in [64, 4096]; 2,048 on accelerators."""
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
    return torch.cat(
        list(extract_batches(encoder, x, device=device, dtype=dtype, batch_size=batch_size))
    )


@torch.no_grad()
def extract_batches(
    encoder: nn.Module,
    x: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """:func:`extract`, one batch of features at a time (float32, on CPU)."""
    encoder.eval()
    bs = batch_size or batch_size_for(encoder, x, device)
    encoder.to(device)
    channels_last = uses_channels_last(encoder, x)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    try:
        for xb in x.split(bs):
            xb = xb.to(device, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                yield encoder(xb).float().cpu()
    finally:
        if channels_last:
            encoder.to(memory_format=torch.contiguous_format)


class Featurizer:
    """Turns (representation, split) into features through the cache. ``encoders`` maps a part
    name to its encoder (``nn.Module``); ``fingerprints`` maps a part to what identifies its
    weights (a checkpoint's sha256), so a retrained member never reuses stale features. A part
    whose encoder sets ``cacheable = False`` (the raw input) is computed every time."""

    def __init__(
        self,
        encoders: Mapping[str, nn.Module] | Callable[[str], nn.Module],
        *,
        device: torch.device,
        dtype: torch.dtype,
        cache: FeatureCache | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> None:
        self._encoders = encoders
        self.device = device
        self.dtype = dtype
        self.cache = cache or FeatureCache()
        self.fingerprints = dict(fingerprints or {})
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # splits cut from one root whose features are cached: (part, root) -> [(rows, key)]
        self._cut: dict[tuple[str, str], list[tuple[Rows, str]]] = {}

    def encoder(self, part: str) -> nn.Module:
        if callable(self._encoders) and not isinstance(self._encoders, Mapping):
            return self._encoders(part)
        return self._encoders[part]

    def key(self, part: str, split: Split) -> str:
        fp = self.fingerprints.get(part, "")[:12]
        dt = str(self.dtype).replace("torch.", "")
        return f"{part}-{fp}-{split.hash}-{dt}" if fp else f"{part}-{split.hash}-{dt}"

    def part(self, name: str, split: Split, lazy: bool = False) -> torch.Tensor | RowSource:
        """Features of representation part ``name`` on ``split``. A split whose features
        would take more than a quarter of ``runtime.memory`` (:mod:`richrep.runtime.memory`) is
        extracted batch by batch straight into the cache file; ``lazy`` then gets it as a row
        source read on demand (the linear probe streams it) instead of a tensor."""
        key = self.key(name, split)
        quarter = MemoryBudget.here().bytes // 4
        if lazy and self.cache.on_disk(key):  # a large cached file is not loaded whole
            rows = self.cache.source(key, count=False)
            if rows is not None and rows.nbytes > quarter:
                self.cache.count_disk_hit()
                return rows
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        encoder = self.encoder(name)
        d = getattr(encoder, "feature_dim", None)
        large = isinstance(d, int) and len(split) * d * 4 > quarter
        if large and self.cache.directory is not None and getattr(encoder, "cacheable", True):
            rows = self._on_disk(name, key, encoder, split)
            return rows if lazy else self.cache.get(key)
        if not getattr(encoder, "cacheable", True):
            x = torch.cat(list(split.x.split(1024))) if is_lazy(split.x) else split.x
            return encoder(x).float()
        with self.cache.claim(key):  # one thread extracts, the others wait for its features
            hit = self.cache.get(key)
            if hit is not None:
                return hit
            have = self._gather(name, split)
            if have is None:
                feats = self._extract(name, encoder, split.x)
            else:
                feats, missing = have
                if missing.any():
                    rows = missing.nonzero().flatten()
                    feats[rows] = self._extract(name, encoder, split.subset(rows).x)
            self.cache.put(key, feats)
            if split.rows is not None:
                with self._locks_lock:
                    self._cut.setdefault((name, split.rows.root), []).append((split.rows, key))
            return feats

    def _on_disk(self, name: str, key: str, encoder: nn.Module, split: Split) -> RowSource:
        """The cache file of ``key``, extracted batch by batch if it is not there yet."""
        with self.cache.claim(key):
            rows = self.cache.source(key)
            if rows is not None:
                return rows
            shape = (len(split), int(encoder.feature_dim))
            with self._encoder_lock(name):
                for bf16 in (self.dtype == torch.bfloat16, False):
                    batches = extract_batches(
                        encoder, split.x, device=self.device, dtype=self.dtype
                    )
                    try:
                        return self.cache.write(key, shape, batches, bf16)
                    except _NotBf16:
                        continue
                    finally:
                        batches.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _extract(self, name: str, encoder: nn.Module, x: Any) -> torch.Tensor:
        with self._encoder_lock(name):  # ``extract`` moves the encoder between devices/formats
            return extract(encoder, x, device=self.device, dtype=self.dtype)

    def _encoder_lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())

    def _gather(self, name: str, split: Split) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Features of ``split``'s rows that splits cut from the same root already have (e.g.
        all ten classes from the first five and the last five) and a mask of the rows still
        missing; None when there are none. So each example's features are computed once."""
        if split.rows is None:
            return None
        with self._locks_lock:
            cuts = list(self._cut.get((name, split.rows.root), ()))
        source = torch.full((split.rows.size,), -1, dtype=torch.long)
        position = torch.zeros(split.rows.size, dtype=torch.long)
        have = []
        for rows, key in cuts:
            feats = self.cache.get(key)
            if feats is not None:
                source[rows.index] = len(have)
                position[rows.index] = torch.arange(len(rows.index))
                have.append(feats)
        if not have:
            return None
        src, pos = source[split.rows.index], position[split.rows.index]
        out = torch.empty(len(split), have[0].shape[1], dtype=have[0].dtype)
        for j, feats in enumerate(have):
            mine = src == j
            out[mine] = feats[pos[mine]]
        return out, src < 0

    def __call__(
        self, rep: Representation, split: Split, lazy: bool = False
    ) -> torch.Tensor | RowSource:
        """``rep``'s features on ``split`` (its parts side by side); ``lazy``: as in :meth:`part`."""
        parts = [self.part(p, split, lazy) for p in rep.parts]
        return parts[0] if len(parts) == 1 else concat_columns(parts)


class Flatten(nn.Flatten):
    """The raw input as features (the ``input`` floor); not worth caching."""

    cacheable = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).float()
