"""Process-wide CPU compute settings, applied explicitly by a stage around its work.

Library code (the probes, the solver) never changes these settings; the stage that runs it
decides. :func:`probe_compute_policy` is the configuration the linear probe's speed was measured
with (``benchmarks/probe.py``). For a CPU solve it changes, for the duration of the ``with``
block:

* **threads** -- one thread when the problem is small (fewer than :data:`SMALL_PROBLEM`
  feature values), else the caller's thread budget (:mod:`richrep.runtime.threads`: the
  ``budget`` passed in, or the one the calling thread's edge applied). A small solve's matmuls
  gain nothing from threads, while idle OpenMP workers spinning between its many small
  operations made it many times slower on a busy machine.
* **float32 matmul precision** -- ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``
  (oneDNN's bf16 "fpmath" mode) for a float32 solve, if a one-off accuracy check on this
  machine (:func:`fast_matmul_ok`) passes. On an AMX CPU this is faster for the probe's
  skinny products and as accurate as IEEE float32 (relative error ~2e-7: the operands
  are not simply rounded to bfloat16). While it is set, torch's legacy
  ``torch.get_float32_matmul_precision()`` raises (torch refuses to summarize a mix of the
  legacy and per-backend settings).

On exit, normally or by an exception, each setting it changed is restored to the value it had
on entry. For another device (CUDA: TF32 is left as the user set it) or a float64 solve the
matmul precision is untouched; for a GPU nothing changes at all.

The thread setting is the calling thread's, and the default that threads started later begin
with; the oneDNN flag is global. Code running concurrently in other Python threads sees the
flag, so apply the policy around a stage's work, not inside library code, and not while other
threads depend on these settings (:func:`threads_share_fast_matmul` sets it around them all).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from richrep.runtime.device import resolve_device
from richrep.runtime.threads import ThreadBudget, current_threads

SMALL_PROBLEM = 1 << 20  # feature values (n x d) below which a CPU probe solve runs on one thread

_FAST_MATMUL_OK: bool | None = None  # result of the one-off accuracy check, once made


@dataclass(frozen=True)
class ComputePolicy:
    """What :func:`probe_compute_policy` put in effect."""

    threads: int  # torch's thread count on the calling thread inside the block
    fast_matmul: bool  # float32 CPU matmuls run in oneDNN's bf16 fpmath mode


def _mkldnn_matmul() -> object | None:
    mm = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return mm if hasattr(mm, "fp32_precision") else None


def fast_matmul_ok() -> bool:
    """Whether oneDNN's bf16 fpmath mode gives float32 accuracy for matmuls on this machine
    (relative error < 1e-5 on a 16 x 512 x 4096 product of operands that bfloat16 cannot
    represent). Checked once per process; the flag is restored after the check."""
    global _FAST_MATMUL_OK
    mm = _mkldnn_matmul()
    if mm is None:
        return False
    if _FAST_MATMUL_OK is None:
        gen = torch.Generator().manual_seed(0)
        A = torch.randn(16, 512, generator=gen)
        A *= 1 + 1e-3 * torch.rand(16, 512, generator=gen)  # not bfloat16-representable
        B = torch.randn(512, 4096, generator=gen)
        exact = A.double() @ B.double()
        old = mm.fp32_precision
        try:
            mm.fp32_precision = "bf16"
            err = float(((A @ B).double() - exact).abs().max() / exact.abs().max())
            _FAST_MATMUL_OK = err < 1e-5
        except (RuntimeError, ValueError, TypeError):
            _FAST_MATMUL_OK = False
        finally:
            mm.fp32_precision = old
    return _FAST_MATMUL_OK


def fast_matmul_active(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether float32 matmuls on ``device`` run in oneDNN's bf16 fpmath mode right now (set by
    :func:`probe_compute_policy`, or by the user, e.g. ``set_float32_matmul_precision("medium")``).
    Reads the setting only."""
    mm = _mkldnn_matmul()
    return (
        mm is not None
        and device.type == "cpu"
        and dtype == torch.float32
        and mm.fp32_precision == "bf16"
    )


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":  # as a probe resolves "auto" for non-tensor input
        return resolve_device(device)
    return torch.device(device)


@contextlib.contextmanager
def probe_compute_policy(
    size: int,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    budget: ThreadBudget | None = None,
) -> Iterator[ComputePolicy]:
    """Apply the probe solver's CPU settings (module docstring) for the ``with`` block; restore
    them on exit, also on an exception.

    ``size``: the feature values the solve works on, ``n x d`` of the training (plus validation)
    features. ``device``: where the probe solves (``"auto"``: CUDA when available, else CPU, as a
    probe does for a numpy input; for a tensor pass its ``.device``). ``dtype``: the probe's
    solver precision. ``budget``: the caller's threads (default: what the calling thread's edge
    applied; outside any edge a large solve keeps the thread's setting). Yields the
    :class:`ComputePolicy` in effect."""
    dev = _device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    cpu = dev.type == "cpu"
    budget = budget or ThreadBudget.here()
    threads = ThreadBudget(1) if cpu and size <= SMALL_PROBLEM else budget if cpu else None
    mm = _mkldnn_matmul()
    old_precision = mm.fp32_precision if mm is not None else None
    with contextlib.ExitStack() as stack:
        if threads is not None:
            stack.enter_context(threads.applied())
        try:
            if cpu and dtype == torch.float32 and fast_matmul_ok():
                mm.fp32_precision = "bf16"
            n = threads.threads if threads is not None else current_threads()
            yield ComputePolicy(n, fast_matmul_active(dev, dtype))
        finally:
            if mm is not None and mm.fp32_precision != old_precision:
                mm.fp32_precision = old_precision


@contextlib.contextmanager
def threads_share_fast_matmul(device: str | torch.device = "cpu") -> Iterator[bool]:
    """For probe solves in several threads at once: put oneDNN's bf16 fpmath mode in effect
    once around all of them (when :func:`fast_matmul_ok`), so that :func:`probe_compute_policy`
    in each thread finds it set and never switches the process-wide flag while another thread
    is in the middle of a solve. Restored on exit; yields whether it is in effect."""
    mm = _mkldnn_matmul()
    if mm is None or _device(device).type != "cpu" or not fast_matmul_ok():
        yield False
        return
    old = mm.fp32_precision
    mm.fp32_precision = "bf16"
    try:
        yield True
    finally:
        mm.fp32_precision = old
