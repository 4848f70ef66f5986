"""Device and precision choices, made once and recorded (threads: runtime/threads.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from richrep.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def check_device(name: str, available: bool = True) -> torch.device:
    """``name`` as a device richrep can train and evaluate on (here, if ``available``), or a
    ConfigError saying why not (not a device name, ``meta``, which holds no data, or an
    accelerator this machine does not have)."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device {name!r} is not a device name (try 'auto', 'cpu', 'cuda', 'cuda:1')"
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"device {name!r}: richrep trains on 'cpu', 'cuda' or 'mps' ('{dev.type}' holds no data "
            f"or is not supported)"
        )
    if not available:
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} was asked for but CUDA is not available on this machine"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()):
            raise ConfigError(
                f"device {name!r} was asked for but MPS is not available on this machine"
            )
    return dev


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return check_device(name)


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype:
    """The autocast dtype: ``auto`` takes bf16 where the hardware runs it fast (CPUs with
    AVX512-BF16/AMX, CUDA GPUs with bf16), fp16 on older GPUs, else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ConfigError(
                "training.precision: fp16 autocast is for GPUs; use bf16 or fp32 on a CPU"
            )
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
