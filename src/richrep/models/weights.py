"""Encoder weights from local safetensors files (never a hub, never pickle): a bare encoder
``state_dict`` (``standardize.*``, ``body.*``), a body alone in torchvision's layout (its
``fc.*`` classifier left out), a classifier's (``encoder.*``, ``head.*``) or richrep's own
checkpoint (``model/encoder.*``, ``model/head.*``, ``optim/*``). Keys and shapes must fit the
encoder exactly — a mismatch is a :class:`~richrep.errors.DataError` naming the file, the key
and both shapes — except the input standardization, which keeps the task's statistics when
the file has none. A file holding NaN or infinite values is refused, naming the file and the
keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from torch import nn

from richrep.errors import DataError

HEAD_PREFIXES = ("head.", "fc.")  # a classifier's layer (richrep's head, torchvision's fc)


@dataclass
class WeightFile:
    """A weight file's tensors split into the encoder's and the classifier head's."""

    path: Path
    sha256: str
    encoder: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: str = "encoder"  # encoder | body | classifier | richrep


def read_weights(path: str | Path, expected_sha256: str = "") -> WeightFile:
    """The file's tensors, split by layout; its sha256 checked against ``expected_sha256``."""
    import hashlib

    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read weight file {p}: {e}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise DataError(
            f"weight file {p} has sha256 {digest[:12]}… but the run recorded "
            f"{expected_sha256[:12]}…: it changed since the experiment was resolved"
        )
    try:
        tensors = load_bytes(blob)
    except (SafetensorError, ValueError) as e:
        raise DataError(f"{p} is not a readable safetensors file: {e}") from None
    layout = "encoder"
    if any(k.startswith("model/") for k in tensors):
        layout = "richrep"
        tensors = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    if tensors and all(k.startswith("module.") for k in tensors):  # DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    head = {k: v for k, v in tensors.items() if k.startswith(HEAD_PREFIXES)}
    rest = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIXES)}
    if any(k.startswith("encoder.") for k in rest):
        layout = "classifier" if layout == "encoder" else layout
        rest = {k[len("encoder.") :]: v for k, v in rest.items() if k.startswith("encoder.")}
    if rest and not any(k.startswith(("body.", "standardize.")) for k in rest):
        layout = "body"  # e.g. torchvision's resnet18().state_dict() without fc.*
        rest = {f"body.{k}": v for k, v in rest.items()}
    _check_finite(p, {**rest, **head})
    return WeightFile(p, digest, rest, head, layout)


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a weight file with NaN or infinite values, naming it and the tensors."""
    bad = sorted(
        k
        for k, t in tensors.items()
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
    )
    if bad:
        raise DataError(
            f"weight file {path} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), "
            f"e.g. {bad[:4]}: its weights are broken; use another file"
        )


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_fit(
    target: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    where: str,
    channels: int = 1,
) -> None:
    """Every key of ``target`` in ``source`` with its shape, no extra keys; the standardization
    may be missing, and holds one value or one per input channel. Raises a DataError naming
    the key(s) and shapes."""
    missing = [k for k in target if k not in source and not k.startswith("standardize.")]
    extra = [k for k in source if k not in target]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) the encoder has, e.g. {missing[:4]}")
        if extra:
            parts.append(f"{len(extra)} key(s) the encoder lacks, e.g. {extra[:4]}")
        raise DataError(
            f"{where}: {'; '.join(parts)} — is it a checkpoint of the configured encoder "
            f"(model.encoder, model.params, model.width)?"
        )
    for k, t in target.items():
        if k in source and _shape(source[k]) != _shape(t) and not k.startswith("standardize."):
            bad = [j for j in target if j in source and _shape(source[j]) != _shape(target[j])]
            raise DataError(
                f"{where}: key {k!r} has shape {_shape(source[k])} in the file but "
                f"{_shape(t)} in the encoder ({len(bad)} key(s) differ) — is it a checkpoint of "
                f"the configured encoder (model.encoder, model.params, model.width)?"
            )
    for k in ("standardize.mean", "standardize.std"):
        if k in source and source[k].numel() not in (1, channels):
            raise DataError(
                f"{where}: key {k!r} has shape {_shape(source[k])} in the file; the encoder "
                f"takes one value or one per input channel ({channels})"
            )


@torch.no_grad()
def load_encoder_weights(encoder: nn.Module, wf: WeightFile) -> list[str]:
    """Copy ``wf``'s encoder tensors into ``encoder`` in place (checked key for key); return
    the keys the file did not have (the standardization, which keeps the task's statistics)."""
    target = encoder.state_dict()
    shape = tuple(getattr(encoder, "input_shape", ()))
    channels = int(shape[0]) if len(shape) >= 2 else 1
    check_fit(target, wf.encoder, f"weight file {wf.path}", channels)
    encoder.load_state_dict(wf.encoder, strict=False)  # every other key checked above
    return [k for k in target if k not in wf.encoder]


@torch.no_grad()
def load_head_weights(head: nn.Module, wf: WeightFile) -> bool:
    """Copy the file's classifier head into ``head`` when it has one of the same shapes (a
    checkpoint trained on the same classes); False, leaving ``head`` as it is, otherwise."""
    if not wf.head:
        return False
    source = {k.split(".", 1)[1]: v for k, v in wf.head.items()}
    target = head.state_dict()
    if set(source) != set(target) or any(_shape(source[k]) != _shape(t) for k, t in target.items()):
        return False
    for k, t in target.items():
        t.copy_(source[k].to(t.dtype))
    return True
