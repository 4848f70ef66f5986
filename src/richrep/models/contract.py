"""The encoder contract, checked when an encoder is registered (its signature,
:func:`check_signature`) and when it is first built (the whole contract on its example input,
:func:`check_entry`, then each new configuration's output shape, :func:`check_build`), so a
broken plug-in fails with a :class:`~richrep.errors.RegistryError` naming the entry and what is
wrong before any training, not mid-training.

An encoder entry is a function ``(input_shape, width=1.0, **params) -> Encoder``:

* ``input_shape`` first (the task's input shape, without the batch), ``width`` (the
  multiplier the ``wide`` baseline searches: it must change the parameter count);
* every other argument has a default, or the entry's ``example_params`` metadata gives them;
* the result is an :class:`~richrep.models.encoders.Encoder`-like ``nn.Module``: a positive
  integer ``feature_dim``, ``input_shape``, an input ``standardize`` whose ``mean`` and
  ``std`` buffers broadcast over the input's channels (one value, or one per channel),
  ``set_input_stats(x)`` and a timm-style ``pretrained_cfg`` dict (``input_size``, ``mean``,
  ``std``, ``num_features``);
* its output on a batch of the entry's ``example_input`` (metadata, default ``(3, 32, 32)``)
  is ``(N, feature_dim)``.

The checks run on the meta device (shapes only, no arithmetic), once per process.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from richrep.errors import ConfigError, RegistryError
from richrep.registry import Entry, Registry

DEFAULT_EXAMPLE_INPUT = (3, 32, 32)
CFG_KEYS = ("input_size", "mean", "std", "num_features")
_CHECKED: set[str] = set()  # entries and configurations already checked in this process


def _fail(name: str, what: str) -> RegistryError:
    return RegistryError(f"encoder {name!r} breaks the encoder contract: {what}")


def check_signature(entry: Entry[Any]) -> None:
    """``input_shape`` first, a ``width`` argument, defaults (or ``example_params``) for the rest."""
    sig = inspect.signature(entry._callable())
    ps = list(sig.parameters.values())
    if inspect.isclass(entry.fn):
        ps = ps[1:]
    if not ps or ps[0].name != "input_shape":
        raise _fail(
            entry.name,
            f"its first argument must be input_shape (the task's input shape), got "
            f"{entry.name}{sig}",
        )
    names = {p.name for p in ps}
    if "width" not in names:
        raise _fail(entry.name, "it takes no 'width' argument (the width multiplier)")
    given = dict(entry.meta.get("example_params") or {})
    missing = [
        p.name
        for p in entry.params()
        if p.default is inspect.Parameter.empty and p.name not in given
    ]
    if missing:
        raise _fail(
            entry.name,
            f"arguments {missing} have no default; give them one or register the entry with "
            f"example_params={{...}}",
        )


def check_module(name: str, enc: Any, input_shape: Sequence[int]) -> None:
    """The returned object's interface (type, feature_dim, standardize, pretrained_cfg)."""
    if not isinstance(enc, nn.Module):
        raise _fail(name, f"it returned a {type(enc).__name__}, not an nn.Module (an Encoder)")
    dim = getattr(enc, "feature_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise _fail(name, f"its module has no positive integer feature_dim (got {dim!r})")
    std = getattr(enc, "standardize", None)
    if not isinstance(std, nn.Module) or not all(
        isinstance(getattr(std, b, None), torch.Tensor) for b in ("mean", "std")
    ):
        raise _fail(name, "its module has no input 'standardize' with 'mean' and 'std' buffers")
    channels = int(input_shape[0]) if len(input_shape) >= 2 else 1
    for b in ("mean", "std"):
        t = getattr(std, b)
        if t.numel() not in (1, channels):
            raise _fail(
                name,
                f"standardize.{b} has {t.numel()} values; it takes one, or one per channel "
                f"({channels}) of input shape {tuple(input_shape)}",
            )
    if not callable(getattr(enc, "set_input_stats", None)):
        raise _fail(name, "its module has no set_input_stats(x)")
    cfg = getattr(enc, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or any(k not in cfg for k in CFG_KEYS):
        raise _fail(name, f"its module's pretrained_cfg must be a dict with keys {list(CFG_KEYS)}")
    if tuple(cfg["input_size"]) != tuple(input_shape) or cfg["num_features"] != dim:
        raise _fail(
            name,
            f"pretrained_cfg says input_size {tuple(cfg['input_size'])}, num_features "
            f"{cfg['num_features']}, but the module takes {tuple(input_shape)} and has "
            f"feature_dim {dim}",
        )


def check_output(name: str, enc: nn.Module, input_shape: Sequence[int]) -> None:
    """A forward pass of two meta-device inputs gives ``(2, feature_dim)``."""
    x = torch.empty((2, *input_shape), device="meta")
    was = enc.training
    enc.eval()
    try:
        out = enc(x)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the plug-in's forward is reported
        raise _fail(name, f"its forward fails on a batch of shape {tuple(x.shape)}: {e}") from None
    finally:
        enc.train(was)
    want = (2, enc.feature_dim)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _fail(
            name,
            f"on a batch of shape {tuple(x.shape)} it returns {got}, not (N, feature_dim) = {want}",
        )


def _meta_build(entry: Entry[Any], input_shape: Sequence[int], width: float, params: Any) -> Any:
    with torch.device("meta"):
        return entry.fn(tuple(input_shape), width=width, **params)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def check_entry(registry: Registry[Any], name: str) -> None:
    """The whole contract for an entry of ``registry``, on its ``example_input``."""
    entry = registry.entry(name)
    check_signature(entry)
    shape = tuple(entry.meta.get("example_input", DEFAULT_EXAMPLE_INPUT))
    params = registry.validate(name, dict(entry.meta.get("example_params") or {}))
    params.pop("width", None)
    try:
        enc = _meta_build(entry, shape, 1.0, params)
        wider = _meta_build(entry, shape, 2.0, params)
    except ConfigError as e:
        raise _fail(entry.name, f"building it for example input {shape} fails: {e}") from None
    check_module(entry.name, enc, shape)
    check_output(entry.name, enc, shape)
    if _count(wider) <= _count(enc):
        raise _fail(
            entry.name,
            f"width 2 gives {_count(wider)} parameters, width 1 {_count(enc)}: the width "
            f"multiplier must widen it (the wide baseline searches it for equal parameters)",
        )


def check_build(
    registry: Registry[Any],
    name: str,
    enc: Any,
    input_shape: Sequence[int],
    width: float,
    params: Mapping[str, Any],
) -> None:
    """A built encoder's interface; the entry's whole contract once, then the output shape once
    per configuration (any width: the ``wide`` baseline's search builds many)."""
    check_module(name, enc, input_shape)
    entry = registry.entry(name)
    if f"{name}@{id(entry.fn)}" not in _CHECKED:  # an entry registered anew is checked anew
        check_entry(registry, name)
        _CHECKED.add(f"{name}@{id(entry.fn)}")
    key = json.dumps([name, id(entry.fn), list(input_shape), params], sort_keys=True, default=str)
    if key in _CHECKED:
        return
    full = registry.validate(name, dict(params), where="model.encoder/params")
    full.pop("width", None)
    check_output(name, _meta_build(entry, input_shape, width, full), input_shape)
    _CHECKED.add(key)
